"""A wrong wall clock, met as a gateway without a battery-backed clock meets it.

The agent runs as a real process under libfaketime (tests/faketime.py): its wall clock
starts in 1970, is stepped to the right time (NTP answering), then back an hour; its
CLOCK_BOOTTIME stays real. The sensor, the receiver and this test run on the real clock,
so the receiver's ``Date`` header is right while the agent's clock is wrong. The test
notes the real time, and the real time since boot, at which each value was served, and
checks every pack that went upstream against them, exactly as it was sent.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from edgeagent.clock import BOOT_ID_FILE, SENML_RELATIVE_BELOW, kernel_synchronized
from edgeagent.sim.ingest import Fault, IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.store import view
from edgeagent.uplinks.http import MAX_RETRY_AFTER_S, parse_retry_after
from tests.agentproc import AgentProcess
from tests.faketime import FakeClock
from tests.helpers import api_status, free_port, site_toml, wait_status, wait_until

BATCH = 50
HOUR_S = 3600
# How far a reading's time may be from the moment its value was served: the agent stamps
# it when the answer arrives, milliseconds later on an idle machine, seconds later on a
# loaded one. So a value served this close to a step may be stamped on either side of it.
TOLERANCE_S = 3.0
BOOT_ID = BOOT_ID_FILE.read_text().strip()


def _since_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class TimedSensor(WaterLevelSimulator):
    """The water-level simulator in counter mode, noting the real wall time and time since
    boot at which each value was served: raw value -> (wall, since boot)."""

    def __init__(self) -> None:
        super().__init__(unit_ids=[1])
        self.counter_mode = True  # every answer a distinct value
        self.served_at: dict[int, tuple[float, float]] = {}

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        before = len(self.served)
        result = await super()._action(function_code, start_address, address, count, registers, set_values)
        if len(self.served) > before:
            self.served_at[self.served[-1][0]] = (time.time(), _since_boot())
        return result

    def when(self, rec: dict[str, Any]) -> tuple[float, float]:
        """(real wall time, real time since boot) at which a record's value was served."""
        return self.served_at[round(rec["v"] * 10)]


@pytest.fixture
def fake_clock(tmp_path: Path) -> Iterator[FakeClock]:
    """A child clock set to 1970, probed first: only the wall clock is faked, and it is."""
    clock = FakeClock(tmp_path)
    clock.set_1970()
    wall, _ = clock.probe()
    assert wall < SENML_RELATIVE_BELOW
    yield clock


async def _stop(agent: AgentProcess) -> tuple[int, str]:
    """SIGTERM, and (exit code, stderr); an agent that already died fails the test with its stderr."""
    assert agent.proc is not None and agent.proc.stderr is not None
    if agent.proc.returncode is None:
        return await agent.terminate()
    err = (await agent.proc.stderr.read()).decode()
    await agent.close()
    raise AssertionError(f"the agent exited with {agent.proc.returncode}:\n{err}")


def _boot_timed_rows(db: Path) -> int:
    """Readings of the buffer still timed from the boot (read-only; the agent keeps writing)."""
    return view.boot_timed(db)


def _as_sent(pack: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float | None]]:
    """Each record of a pack with its absolute time as RFC 8428 reads it (None: no time, ``tq``)."""
    out: list[tuple[dict[str, Any], float | None]] = []
    base = 0.0
    for rec in pack:
        if "bt" in rec:
            base = rec["bt"]
            assert base >= SENML_RELATIVE_BELOW, f"base time {base} would be read as relative to now"
        if "tq" in rec:
            assert "t" not in rec, rec
            out.append((rec, None))
        else:
            out.append((rec, base + rec.get("t", 0.0)))
    return out


def _is_measurement(rec: dict[str, Any]) -> bool:
    """A water level (not a state event, nor the gateway's own), as sent or as resolved."""
    return bool(rec["n"].endswith("wl-01/water_level") and "v" in rec)


def _measurements(ingest: IngestServer) -> list[dict[str, Any]]:
    return [rec for rec in ingest.records.values() if _is_measurement(rec)]


def _received_between(ingest: IngestServer, sensor: TimedSensor, after: float, before: float) -> int:
    """How many water levels served between two real times have arrived."""
    return sum(after < sensor.when(rec)[0] < before for rec in _measurements(ingest))


def _assert_boot_timed(rec: dict[str, Any], since_boot: float | None = None) -> None:
    assert rec.get("tq") == "boot" and rec.get("boot") == BOOT_ID and "t" not in rec, rec
    if since_boot is not None:
        assert abs(rec["up"] - since_boot) < TOLERANCE_S, (rec, since_boot)


async def test_a_clock_from_1970_stepped_right_then_back_an_hour_never_sends_a_false_time(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    web_port = free_port()
    db = tmp_path / "state" / "buffer.sqlite"
    ingest = IngestServer(port=free_port())
    await ingest.start()
    async with TimedSensor() as sensor:
        config = tmp_path / "site.toml"
        config.write_text(
            site_toml(
                state_dir=tmp_path / "state",
                modbus_port=sensor.port,
                ingest_url=ingest.url,
                poll_interval_s=0.02,
                web_port=web_port,
                batch_max_readings=BATCH,
            )
        )
        agent = AgentProcess(config, env=fake_clock.env())
        await agent.start(notify_dir=tmp_path)
        try:
            await agent.wait_ready()

            # A: the clock says 1970. Readings flow at once, timed from the boot.
            status = await api_status(web_port)
            assert status["gateway"]["clock"]["plausible"] is False
            await wait_until(lambda: len(_measurements(ingest)) >= 50, 30, "readings upstream in 1970")
            await ingest.stop()  # the link goes down: what is taken now waits in the buffer
            phase_a_packs = len(ingest.packs)
            await wait_status(web_port, lambda s: s["uplinks"][0]["unsent"] >= 150, "a backlog in 1970")

            # B: NTP answers. The backlog of this boot gets its wall times before it goes.
            step_b = time.time()
            fake_clock.right()
            await wait_status(web_port, lambda s: s["gateway"]["clock"]["plausible"], "a plausible clock")
            await wait_until(lambda: _boot_timed_rows(db) == 0, 10, "the buffer to be re-timed")
            await ingest.start()
            await wait_until(
                lambda: _received_between(ingest, sensor, step_b + TOLERANCE_S, time.time() - TOLERANCE_S) >= 20,
                30,
                "the backlog delivered and readings well after the step",
            )

            # C: the clock is stepped back an hour (a bad NTP server, an operator).
            step_c = time.time()
            fake_clock.set_offset(-HOUR_S)
            await wait_until(
                lambda: _received_between(ingest, sensor, step_c + TOLERANCE_S, float("inf")) >= 20,
                30,
                "readings well after the step back",
            )
            assert (await api_status(web_port))["gateway"]["clock"]["plausible"] is True

            # Let everything drain: the sensor falls silent, until the last reading
            # committed is the last one received.
            sensor.silent = True
            while True:
                status = await api_status(web_port)
                last = status["store"]["last_seq"]
                await wait_until(lambda last=last: ingest.seqs()[-1:] == [last], 30, "the buffer to drain")
                settled = await api_status(web_port)
                if settled["store"]["last_seq"] == last and settled["store"]["pending_commit"] == 0:
                    break
        finally:
            code, err = await _stop(agent)
            await ingest.stop()
    assert code == 0, err

    # Nothing ever went out with an absolute time below 2**28: each record either has a
    # wall time or says it has none (tq), and then it is timed from this boot.
    sent = [(i, rec, t) for i, pack in enumerate(ingest.packs) for rec, t in _as_sent(pack)]
    for _, rec, t in sent:
        if t is None:
            _assert_boot_timed(rec)
        else:
            assert t >= SENML_RELATIVE_BELOW, rec

    # Every sequence number once, gapless; the readings arrived in the order they were taken.
    assert ingest.seqs() == list(range(1, last + 1))
    first_arrivals: list[int] = []
    for _, rec, _ in sent:
        if _is_measurement(rec) and rec["seq"] not in first_arrivals:
            first_arrivals.append(rec["seq"])
    assert first_arrivals == sorted(first_arrivals)

    # A: what went out while the clock said 1970 carried no time but the boot id and the
    # exact time since boot; no pack had a base time.
    phase_a = [rec for i, rec, _ in sent if i < phase_a_packs]
    assert not any("bt" in pack[0] for pack in ingest.packs[:phase_a_packs])
    assert sum(map(_is_measurement, phase_a)) >= 50
    for rec in phase_a:
        _assert_boot_timed(rec, sensor.when(rec)[1] if _is_measurement(rec) else None)

    # B: the backlog taken in 1970 and sent after the step carries its corrected wall
    # times, within a few seconds of when it was taken. Only the batch already in hand
    # when the link went down is resent as it was (timed from the boot, still placeable).
    sent_in_a = {rec["seq"] for rec in phase_a}
    later = [(rec, t) for i, rec, t in sent if i >= phase_a_packs and _is_measurement(rec)]
    backlog = [(rec, t) for rec, t in later if rec["seq"] not in sent_in_a and sensor.when(rec)[0] < step_b]
    corrected = 0
    for rec, t in backlog:
        wall, since_boot = sensor.when(rec)
        if t is None:
            _assert_boot_timed(rec, since_boot)
        else:
            assert abs(t - wall) < TOLERANCE_S, (rec, t, wall)
            corrected += 1
    assert len(backlog) >= 100
    assert corrected >= len(backlog) - BATCH, f"{corrected} of {len(backlog)} re-timed"

    # After B the agent's clock is right; after C it is an hour behind, and what it says
    # is what goes out (it cannot know better), still a wall time and in order.
    after_b = after_c = 0
    for rec, t in later:
        wall, _ = sensor.when(rec)
        if wall < step_b + TOLERANCE_S:
            continue
        assert t is not None, rec
        right, behind = abs(t - wall) < TOLERANCE_S, abs(t - (wall - HOUR_S)) < TOLERANCE_S
        if wall < step_c - TOLERANCE_S:
            assert right, (rec, t, wall)
            after_b += 1
        elif wall > step_c + TOLERANCE_S:
            assert behind, (rec, t, wall)
            after_c += 1
        else:
            assert right or behind, (rec, t, wall)
    assert after_b >= 20 and after_c >= 20
    assert "the wall clock is set" in err, err


async def test_an_http_date_retry_after_is_read_against_the_receivers_date_not_a_1970_clock(
    tmp_path: Path, fake_clock: FakeClock, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    # Today's date, 5 s after the answer's own Date; against the agent's 1970 clock it is
    # 56 years away, which would mean waiting the cap (10 minutes; an hour before that).
    ingest.faults.append(Fault("status", status=503, retry_after_date_in_s=5))
    config = tmp_path / "site.toml"
    config.write_text(site_toml(state_dir=tmp_path / "state", modbus_port=sensor.port, ingest_url=ingest.url))
    agent = AgentProcess(config, env=fake_clock.env())
    await agent.start(notify_dir=tmp_path)
    try:
        await agent.wait_ready()
        await wait_until(lambda: ingest.stats.batches_accepted >= 1, 30, "the retry after the 503")
    finally:
        code, err = await _stop(agent)
    assert code == 0, err
    assert [s for _, s in ingest.request_log[:2]] == [503, 200]
    # Measured against the 503 itself: the retry policy's own backoff is at most 0.5 s.
    (gap,) = ingest.gaps_after_status(503)
    assert 3.0 <= gap <= 15.0, gap


async def test_status_page_shows_the_clock_implausible_in_1970_and_plausible_once_stepped(
    tmp_path: Path, fake_clock: FakeClock, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    web_port = free_port()
    config = tmp_path / "site.toml"
    config.write_text(
        site_toml(state_dir=tmp_path / "state", modbus_port=sensor.port, ingest_url=ingest.url, web_port=web_port)
    )
    agent = AgentProcess(config, env=fake_clock.env())
    await agent.start(notify_dir=tmp_path)
    try:
        await agent.wait_ready()
        clock = (await api_status(web_port))["gateway"]["clock"]
        # Synchronised is the kernel's word (adjtimex), whatever the process's own clock says.
        assert clock == {"plausible": False, "synchronized": kernel_synchronized(), "boot_id": BOOT_ID}
        fake_clock.right()
        status = await wait_status(web_port, lambda s: s["gateway"]["clock"]["plausible"], "a plausible clock")
        assert status["gateway"]["clock"]["synchronized"] == kernel_synchronized()
    finally:
        code, err = await _stop(agent)
    assert code == 0, err


# -- Retry-After, unit-level --------------------------------------------------------------

NOW = 1_790_000_000.0  # a plausible wall time (2026)


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "date", "local", "expected"),
    [
        # An HTTP date is read against the answer's Date; the local clock does not matter.
        (_date(NOW + 5), _date(NOW), 600.0, 5.0),
        (_date(NOW + 5), _date(NOW), NOW + 3 * HOUR_S, 5.0),
        (_date(NOW - 30), _date(NOW), 600.0, 0.0),  # already past: retry at once
        # Without a Date, a plausible local clock is used; an implausible one is not (backoff applies).
        (_date(NOW + 5), None, NOW, 5.0),
        (_date(NOW + 5), None, 600.0, None),
        (_date(NOW + 5), "not a date", 600.0, None),
        # Capped, however it is given.
        (_date(NOW + 3 * HOUR_S), _date(NOW), 600.0, MAX_RETRY_AFTER_S),
        ("7200", None, 600.0, MAX_RETRY_AFTER_S),
        # Seconds mean seconds, whatever the clocks say.
        ("5", _date(NOW), 600.0, 5.0),
        ("soon", _date(NOW), NOW, None),
        (None, _date(NOW), NOW, None),
    ],
)
def test_parse_retry_after(retry_after: str | None, date: str | None, local: float, expected: float | None) -> None:
    assert parse_retry_after(retry_after, date, now=local) == expected
