"""One pipeline for every bundle, from any channel: decide, apply, watch, commit or roll back, report.

    verify signatures (threshold, trust epoch) -> target, version, expiry
      -> validate as check-config does -> dry run
      -> candidate slot + pending marker -> live apply (only what changed restarts)
      -> health window -> commit (last-good := candidate, marker removed)
                       -> or roll back to what ran before, by itself

Nothing of the payload is decoded before its signatures verify. A version must be
higher than every version that ever reached the apply step (committed or rolled back),
so neither a replay nor a downgrade nor the retry of a failed push can happen; a
revert is a new, higher version. Bundles that arrive together (the retained messages
of a gateway's and its groups' topics) compete by version: trust bundles first, then
configs from the highest down, and the first one applied wins. A bundle already
decided (by its digest) is not decided again when a channel delivers it once more.

Each step may be a place to die: ``EDGEAGENT_FLEET_TEST_KILL_AT=<step>`` makes the
process SIGKILL itself there (a test seam, see docs/fleet.md), and a start that finds
the pending marker runs last-good and reports ``rolled_back: interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.clock import kernel_synchronized
from edgeagent.config import SiteConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.fleet import window
from edgeagent.fleet.bundle import (
    APPLIED,
    DRY_RUN,
    EXPIRED,
    HEALTH,
    INTERRUPTED,
    NOT_FOR_ME,
    NOT_NEWER,
    REJECTED,
    ROLLED_BACK,
    SCHEMA,
    SIGNATURE_CODES,
    Bundle,
    Rejected,
    payload_of,
    read_bundle,
    verify,
)
from edgeagent.fleet.compose import compose, dry_run, slots_of
from edgeagent.fleet.report import Reporter
from edgeagent.fleet.slots import Marker, SlotConfig
from edgeagent.fleet.trust import Trust, TrustError, parse_trust, read_trust_file
from edgeagent.live import Live
from edgeagent.reload import Plan, config_hash, plan_reload

log = logging.getLogger(__name__)

KILL_ENV = "EDGEAGENT_FLEET_TEST_KILL_AT"
STEPS = (
    "verified",
    "validated",
    "dry_run",
    "candidate_written",
    "marker_written",
    "applied",
    "healthy",
    "committed",
    "finished",
    "rolled_back",
)
# Retained messages of several topics arrive within milliseconds of a subscription: wait
# this long after the first so they compete by version instead of by arrival order.
SETTLE_S = 0.3


@dataclass(slots=True)
class FleetHost:
    """What the pipeline may do to the running agent, handed in by the supervisor (never imported)."""

    site: Callable[[], SiteConfig]  # the config running now
    # Apply a validated site through live reconfiguration: (site, digest, detail, fleet version) -> plan.
    reconfigure: Callable[[SiteConfig, str, str, int], Awaitable[Plan]]
    live: Callable[[], Live]
    # An event set by the store's next commit (``Store.subscribe``), and its release.
    commits: Callable[[], tuple[asyncio.Event, Callable[[], None]]]
    report: Callable[[str, str, str], None]  # the gateway's own event reading: point, value, reason
    status: Callable[[dict[str, Any]], None]  # what the status page shows under gateway.config.fleet


@dataclass(slots=True)
class _Checked:
    bundle: Bundle
    payload: bytes
    site: SiteConfig | None = None
    plan: Plan | None = None
    signers: list[str] = field(default_factory=list)


class FleetService:
    def __init__(
        self,
        site: SiteConfig,
        config_path: Path,
        host: FleetHost,
        *,
        running_version: int | None,
        clock_synchronized: Callable[[], bool | None] = kernel_synchronized,
    ) -> None:
        assert site.fleet is not None
        self.cfg = site.fleet
        self.gateway = site.gateway.id
        self.config_path = config_path
        self.slots = slots_of(site)
        self.host = host
        self.clock_synchronized = clock_synchronized
        self.running_version = running_version or 0
        self.running: SlotConfig | None = None  # the pushed config running now (None: the local file)
        self.trust = Trust(0, 1, {})
        self.reporter = Reporter(self.gateway, self.cfg.groups, host.report, host.status)
        self.kill_at = os.environ.get(KILL_ENV)
        self._inbox: dict[str, bytes] = {}  # source (topic or URL) -> the latest bytes it delivered
        self._held: dict[str, bytes] = {}  # the same, kept to decide again after a trust rotation
        self._wake = asyncio.Event()
        self.running_changed = asyncio.Event()
        self.state = self.slots.state()  # replaced in start(); read here so the type is set

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load trust and state, finish what a kill interrupted, and say where this gateway stands."""
        await asyncio.to_thread(self._load)
        self.reporter.publish(self._standing())
        await self._recover()

    def _load(self) -> None:
        self.trust = read_trust_file(self.cfg.trust_file)
        stored = self.slots.trust()
        if stored is not None:
            try:
                rotated = parse_trust(stored)
            except TrustError as exc:
                log.error(
                    "fleet: the rotated trust in %s is damaged (%s); using %s",
                    self.slots.folder,
                    exc,
                    self.cfg.trust_file,
                )
            else:
                if rotated.epoch > self.trust.epoch:
                    self.trust = rotated
        self.state = self.slots.state()
        if self.running_version:
            good = self.slots.last_good()
            self.running = good if good is not None and good.version == self.running_version else None

    def _standing(self) -> dict[str, Any]:
        return {"running_version": self.running_version, "epoch": self.trust.epoch, "last": self.state.last}

    async def _recover(self) -> None:
        marker = await asyncio.to_thread(self.slots.marker)
        if marker is None:
            return
        good = await asyncio.to_thread(self.slots.last_good)
        if good is not None and good.version == marker.version and good.bundle_digest == marker.bundle_digest:
            # Killed after the commit's rename: the apply was whole and committed.
            self.state.attempted_version = max(self.state.attempted_version, marker.version)
            reason = "committed just before the agent stopped"
            await self._finish(
                "config",
                APPLIED,
                None,
                marker.version,
                marker.previous_version,
                reason,
                marker.bundle_digest,
                clear=True,
            )
            return
        previous = good.version if good is not None else 0
        reason = f"the agent stopped while applying version {marker.version}; version {previous} runs"
        if self.running_version == marker.version and marker.version != previous:
            await self._restore(good)  # a restart inside this process: the candidate still runs
        self.state.attempted_version = max(self.state.attempted_version, marker.version)
        await self._finish(
            "config", ROLLED_BACK, INTERRUPTED, marker.version, previous, reason, marker.bundle_digest, clear=True
        )

    async def _restore(self, good: SlotConfig | None) -> None:
        from edgeagent.cli import load_for_run

        local = await asyncio.to_thread(load_for_run, str(self.config_path))
        site = local
        if good is not None:
            site = await asyncio.to_thread(compose, local, good.payload, self.config_path)
        version = good.version if good is not None else 0
        await self.host.reconfigure(site, "restore", f"fleet version {version} (restored)", version)
        self.running_version, self.running = version, good

    # -- intake --------------------------------------------------------------------------

    def submit(self, raw: bytes, source: str) -> None:
        """A channel delivered these bytes (a retained message, an HTTP body); decided soon, in order."""
        self._inbox[source] = raw
        self._held[source] = raw
        self._wake.set()

    def channel_state(self, channel: str, state: str) -> None:
        self.reporter.channel(channel, state)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(SETTLE_S)
            self._wake.clear()
            batch, self._inbox = self._inbox, {}
            await self._process(list(batch.values()))

    async def _process(self, raws: list[bytes]) -> None:
        bundles: dict[str, Bundle] = {}
        for raw in raws:
            try:
                b = read_bundle(raw)
            except Rejected as exc:
                digest = hashlib.sha256(raw).hexdigest()
                if digest not in self.state.decided:
                    await self._finish("bundle", REJECTED, exc.code, None, self.running_version, exc.reason, digest)
                continue
            if b.digest in self.state.decided or (self.running and b.digest == self.running.bundle_digest):
                log.debug("fleet: %s version %d already decided", b.kind, b.version)
                continue
            bundles[b.digest] = b
        for b in sorted((b for b in bundles.values() if b.kind == "trust"), key=lambda b: b.version):
            await self._decide_trust(b)
        reached_apply = None
        for b in sorted((b for b in bundles.values() if b.kind == "config"), key=lambda b: -b.version):
            if reached_apply is not None:
                log.info("fleet: config version %d superseded by version %d", b.version, reached_apply)
                self.state.decide(b.digest, "superseded")
                continue
            if await self._decide_config(b):
                reached_apply = b.version

    # -- checks --------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.kill_at == name:
            log.warning("fleet: %s=%s: killing this process now (test seam)", KILL_ENV, name)
            os.kill(os.getpid(), signal.SIGKILL)

    def _check(self, b: Bundle, current: int) -> _Checked:
        """Signatures, target, version, expiry; then the payload, decoded only now."""
        signers = verify(b, self.trust)
        self._step("verified")
        if not b.is_for(self.gateway, self.cfg.groups):
            raise Rejected(
                NOT_FOR_ME,
                f"for {b.describe_targets()}; this is {self.gateway}"
                + (f" in {', '.join(self.cfg.groups)}" if self.cfg.groups else ""),
            )
        if b.version <= current:
            raise Rejected(NOT_NEWER, f"version {b.version} is not above {current}")
        if b.expires_at is not None and b.expires_at < time.time():
            if self.clock_synchronized():
                raise Rejected(EXPIRED, f"expired at {_iso(b.expires_at)}")
            log.warning(
                "fleet: %s version %d expired at %s by a clock not known good: accepted",
                b.kind,
                b.version,
                _iso(b.expires_at),
            )
        return _Checked(b, payload_of(b), signers=signers)

    async def _decide_trust(self, b: Bundle) -> None:
        previous = self.trust.epoch
        try:
            checked = self._check(b, previous)
            try:
                new = parse_trust(checked.payload)
            except TrustError as exc:
                raise Rejected(SCHEMA, f"trust payload: {exc}") from exc
            if new.epoch != b.version:
                raise Rejected(SCHEMA, f"trust payload has epoch {new.epoch}; the bundle says {b.version}")
        except Rejected as exc:
            await self._finish("trust", REJECTED, exc.code, b.version, previous, exc.reason, b.digest)
            return
        except Exception as exc:  # as for a config: refused and recorded, never a crash loop
            log.exception("fleet: trust epoch %d could not be checked", b.version)
            reason = f"internal error while checking it: {exc!r}"
            await self._finish("trust", REJECTED, DRY_RUN, b.version, previous, reason, b.digest)
            return
        await asyncio.to_thread(self.slots.write_trust, checked.payload)
        self.trust = new
        detail = f"{len(new.keys)} keys ({', '.join(sorted(new.keys))}), threshold {new.threshold}"
        await self._finish("trust", APPLIED, None, b.version, previous, detail, b.digest)
        self._decide_again()

    def _decide_again(self) -> None:
        """After a rotation, bundles refused for their signatures may now verify: decide them again."""
        for source, raw in self._held.items():
            digest = _digest_of(raw)
            if digest is not None and self.state.decided.get(digest) in SIGNATURE_CODES:
                del self.state.decided[digest]
                self.submit(raw, source)

    async def _decide_config(self, b: Bundle) -> bool:
        """Decide one config bundle; True when it reached the apply step (applied or rolled back)."""
        current = max(self.running_version, self.state.attempted_version)
        try:
            checked = self._check(b, current)
            checked.site = await asyncio.to_thread(compose, self.host.site(), checked.payload, self.config_path)
            self._step("validated")
            checked.plan = plan_reload(self.host.site(), checked.site)
            if checked.plan.restart_all:
                raise Rejected(
                    DRY_RUN, "changes [gateway] settings that need every part restarted: change them locally"
                )
            started = [*checked.plan.buses_start, *checked.plan.swap]
            await asyncio.to_thread(dry_run, checked.site, started)
            self._step("dry_run")
        except Rejected as exc:
            await self._finish("config", REJECTED, exc.code, b.version, self.running_version, exc.reason, b.digest)
            return False
        except Exception as exc:
            # A bug met while checking must not crash the agent: the retained bundle would come
            # back at every start and cut the gateway off. It is refused, recorded and reported.
            log.exception("fleet: config version %d could not be checked", b.version)
            reason = f"internal error while checking it: {exc!r}"
            await self._finish("config", REJECTED, DRY_RUN, b.version, self.running_version, reason, b.digest)
            return False
        await self._apply(checked)
        return True

    # -- apply, watch, commit or roll back -----------------------------------------------

    async def _apply(self, checked: _Checked) -> None:
        b, site = checked.bundle, checked.site
        assert site is not None
        previous_site, previous, previous_slot = self.host.site(), self.running_version, self.running
        slot = SlotConfig(b.version, b.digest, checked.payload, b.issued_at, b.expires_at, time.time())
        await asyncio.to_thread(self.slots.write_candidate, slot)
        self._step("candidate_written")
        await asyncio.to_thread(self.slots.write_marker, Marker(b.version, previous, b.digest, time.time()))
        self._step("marker_written")
        self.reporter.applying(b.version, previous)
        noted = window.before(self.host.live())
        committed, release = self.host.commits()
        try:
            problem: str | None
            try:
                plan = await self.host.reconfigure(
                    site, config_hash(checked.payload), f"fleet version {b.version}", b.version
                )
            except (EdgeAgentError, OSError) as exc:
                problem = f"the apply failed: {exc}"
            else:
                self.running_version, self.running = b.version, slot
                self._step("applied")
                problem = await window.watch(
                    self.host.live, plan.devices_new, noted, committed, self.cfg.health_window_s
                )
        finally:
            release()
        if problem is None:
            self._step("healthy")
            await asyncio.to_thread(self.slots.commit_candidate)
            self._step("committed")
            self.state.attempted_version = max(self.state.attempted_version, b.version)
            signed = ", ".join(checked.signers)
            await self._finish(
                "config",
                APPLIED,
                None,
                b.version,
                previous,
                f"{b.describe_targets()}; signed by {signed}",
                b.digest,
                clear=True,
            )
            self._step("finished")
            return
        log.error("fleet: version %d is unhealthy (%s); rolling back to version %d", b.version, problem, previous)
        await self.host.reconfigure(previous_site, "rollback", f"fleet version {previous} (rollback)", previous)
        self.running_version, self.running = previous, previous_slot
        self._step("rolled_back")
        self.state.attempted_version = max(self.state.attempted_version, b.version)
        await self._finish("config", ROLLED_BACK, HEALTH, b.version, previous, problem, b.digest, clear=True)

    async def _finish(
        self,
        kind: str,
        outcome: str,
        code: str | None,
        version: int | None,
        previous: int,
        reason: str,
        digest: str,
        *,
        clear: bool = False,
    ) -> None:
        """Record a decision durably (state, then the marker gone), then report it everywhere."""
        self.state.decide(digest, code or outcome)
        last = self.reporter.outcome(kind, outcome, code, version, previous, reason)
        self.state.last = last
        await asyncio.to_thread(self._save, clear)
        self.running_changed.set()
        self.reporter.publish(self._standing())

    def _save(self, clear: bool) -> None:
        self.slots.write_state(self.state)
        if clear:
            self.slots.remove("pending.json", "candidate.json")

    # -- expiry of the running config ----------------------------------------------------

    async def watch_expiry(self) -> None:
        """A running config is never removed for expiring; its expiry is reported once, by a good clock."""
        while True:
            self.running_changed.clear()
            slot = self.running
            wait_s: float | None = None
            if slot is not None and slot.expires_at is not None and self.state.expired_reported != slot.version:
                wait_s = slot.expires_at - time.time()
                if wait_s <= 0:
                    if self.clock_synchronized():
                        await self._report_expired(slot)
                        continue
                    wait_s = 60.0  # the clock is not known good: ask again later
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.running_changed.wait(), None if wait_s is None else min(wait_s, 3600.0))

    async def _report_expired(self, slot: SlotConfig) -> None:
        reason = f"version {slot.version} expired at {_iso(slot.expires_at or 0)}; it keeps running until a newer push"
        log.warning("fleet: %s", reason)
        self.reporter.expired(slot.version, reason)
        self.state.expired_reported = slot.version
        await asyncio.to_thread(self.slots.write_state, self.state)


def _digest_of(raw: bytes) -> str | None:
    try:
        return read_bundle(raw).digest
    except Rejected:
        return None


def _iso(ts: int | float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
