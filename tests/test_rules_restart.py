"""The rules across a SIGKILL and across SIGHUP reloads, with real agent processes.

What the agent did is read where an operator would see it: the records upstream (the
ingest endpoint) and the rules' state file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edgeagent.rules.state import STATE_FILE
from tests.agentproc import AgentProcess
from tests.helpers import wait_until
from tests.rulesite import alarm_records, simulators, site_data, to_toml

pytestmark = pytest.mark.timeout(240)

# The issue states for_s = 60 with the kill 40 s in; the default keeps those proportions at
# 0.3 of the time (for_s 18, kill at 12 s, the raise due 6 s after the kill: still ample for
# a restart on a loaded machine). EDGEAGENT_TEST_FOR_S=60 runs it as stated.
FOR_S = float(os.environ.get("EDGEAGENT_TEST_FOR_S", "18"))

RESTART_RULES = f"""
[[rules]]
name = "slow-flood"
subjects = {{ devices = ["wl-01"] }}
inputs = {{ depth = "water_level" }}
when = "depth > 150"
for_s = {FOR_S}
severity = "critical"

[[rules]]
name = "quick-flood"
subjects = {{ devices = ["wl-02"] }}
inputs = {{ depth = "water_level" }}
when = "depth > 150"
for_s = 1
severity = "major"
"""


def saved_state(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / STATE_FILE).read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return {}


def subject_state(state: Path, rule: str, subject: str) -> dict[str, Any]:
    return saved_state(state).get("rules", {}).get(rule, {}).get("subjects", {}).get(subject, {})  # type: ignore[no-any-return]


async def test_a_sigkill_while_a_condition_is_pending_raises_on_its_deadline_and_repeats_no_alarm(
    tmp_path: Path,
) -> None:
    """Acceptance 5: pending 2/3 of for_s at the kill; the raise comes 1/3 of for_s after it."""
    state = tmp_path / "state"
    async with simulators() as sims:
        sims.wl1.fixed_level_mm = sims.wl2.fixed_level_mm = 200.0
        config = tmp_path / "site.toml"
        config.write_text(to_toml(site_data(sims, state), RESTART_RULES))
        agent = AgentProcess(config)
        await agent.start(notify_dir=tmp_path)
        try:
            await agent.wait_ready()
            await wait_until(lambda: "pending_raise" in subject_state(state, "slow-flood", "wl-01"), 15, "pending")
            deadline = subject_state(state, "slow-flood", "wl-01")["pending_raise"]
            await wait_until(lambda: subject_state(state, "quick-flood", "wl-02").get("alarm") == "raised", 10, "quick")
            await wait_until(lambda: len(alarm_records(sims.ingest, "wl-02/quick-flood")) == 1, 10, "upstream")
            await wait_until(lambda: time.time() >= deadline - FOR_S / 3, FOR_S, "2/3 of for_s pending")
            killed_at = time.time()
            await agent.kill()
            agent = AgentProcess(config)
            await agent.start(notify_dir=tmp_path)
            await agent.wait_ready()
            await wait_until(lambda: alarm_records(sims.ingest, "wl-01/slow-flood"), FOR_S, "the raise after restart")
            await asyncio.sleep(1.5)  # a repeated raise of the other alarm would be upstream by now
            code, stderr = await agent.terminate()
        finally:
            if agent.proc is not None and agent.proc.returncode is None:
                await agent.kill()
    assert code == 0, stderr
    (raised,) = alarm_records(sims.ingest, "wl-01/slow-flood")
    assert raised["vs"] == "raised"
    assert abs(raised["t"] - deadline) < 0.002, "raised on the deadline written before the kill"
    after = raised["t"] - killed_at
    assert FOR_S / 3 - 0.5 <= after <= FOR_S / 3 + FOR_S / 12, f"raised {after:.2f} s after the kill"
    assert [r["vs"] for r in alarm_records(sims.ingest, "wl-02/quick-flood")] == ["raised"], "not raised again"


RELOAD_RULES = """
[[rules]]
name = "quick-flood"
subjects = { devices = ["wl-02"] }
inputs = { depth = "water_level" }
when = "depth > 150"
for_s = 1
severity = "major"

[[rules]]
name = "slow-flood"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "depth > 150"
for_s = 12
severity = "critical"
"""


async def test_sighup_with_a_broken_rule_keeps_the_old_rules_and_a_changed_rule_restarts_alone(tmp_path: Path) -> None:
    """Acceptance 8: a broken rule is refused with its place; the rules running go on as they were."""
    state = tmp_path / "state"
    async with simulators() as sims:
        sims.wl1.fixed_level_mm = sims.wl2.fixed_level_mm = 200.0
        config = tmp_path / "site.toml"
        data = site_data(sims, state)
        config.write_text(to_toml(data, RELOAD_RULES))
        agent = AgentProcess(config)
        await agent.start(notify_dir=tmp_path)
        try:
            await agent.wait_ready()
            assert agent.proc is not None
            await wait_until(lambda: "pending_raise" in subject_state(state, "slow-flood", "wl-01"), 15, "pending")
            deadline = subject_state(state, "slow-flood", "wl-01")["pending_raise"]
            await wait_until(lambda: alarm_records(sims.ingest, "wl-02/quick-flood"), 10, "quick raised")

            broken = RELOAD_RULES.replace('when = "depth > 150"\nfor_s = 12', 'when = "depth >> 150"\nfor_s = 12')
            config.write_text(to_toml(data, broken))
            agent.proc.send_signal(signal.SIGHUP)
            rejected = await _gateway_event(sims.ingest, "config_rejected")
            assert "rules[1].when: rule 'slow-flood': 1:8: expected a number, an input or '('" in rejected["reason"]
            await wait_until(lambda: alarm_records(sims.ingest, "wl-01/slow-flood"), 15, "the old rule raising")
            assert abs(alarm_records(sims.ingest, "wl-01/slow-flood")[0]["t"] - deadline) < 0.002, "on its deadline"

            # A valid change to one rule: it restarts alone, its active alarm neither cleared nor repeated.
            config.write_text(to_toml(data, RELOAD_RULES.replace('severity = "major"', 'severity = "minor"')))
            agent.proc.send_signal(signal.SIGHUP)
            applied = await _gateway_event(sims.ingest, "config_applied")
            assert "rules restarted: quick-flood" in applied["reason"] and "slow-flood" not in applied["reason"]
            sims.wl2.fixed_level_mm = 20.0  # the changed rule is alive: it clears, with its new severity
            await wait_until(lambda: len(alarm_records(sims.ingest, "wl-02/quick-flood")) == 2, 10, "the clear")
            code, stderr = await agent.terminate()
        finally:
            if agent.proc is not None and agent.proc.returncode is None:
                await agent.kill()
    assert code == 0, stderr
    quick = alarm_records(sims.ingest, "wl-02/quick-flood")
    assert [(r["vs"], r["reason"].split(":")[0]) for r in quick] == [("raised", "major"), ("cleared", "minor")]
    assert [r["vs"] for r in alarm_records(sims.ingest, "wl-01/slow-flood")] == ["raised"]
    assert "reload rejected" in stderr


async def _gateway_event(ingest: Any, name: str) -> dict[str, Any]:
    await wait_until(lambda: alarm_records(ingest, f"gateway/{name}"), 15, name)
    return alarm_records(ingest, f"gateway/{name}")[-1]
