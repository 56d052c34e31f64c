"""What ``/api/status`` answers: the live picture, the store's figures, and how to show them.

Values carry what a person needs to read them: the point's label, the decimals the
profile gives, the unit as people write it (°C, not ``Cel``), and whether the point is a
fault that is set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from edgeagent import __version__
from edgeagent.clock import clock_state
from edgeagent.live import DeviceLive, Live, PointValue
from edgeagent.profiles import Profile
from edgeagent.reload import ConfigState
from edgeagent.store import Store

StatusFn = Callable[[], Awaitable[dict[str, Any]]]
# Units as the profiles write them (UCUM-like codes) -> as people read them; "" shows none.
UNITS_SHOWN = {"Cel": "°C", "cd/m2": "cd/m²", "%RH": "%", "flag": "", "code": "", "count": ""}


def unit_shown(unit: str) -> str:
    return UNITS_SHOWN.get(unit, unit)


def point_meta(profiles: dict[str, Profile]) -> dict[tuple[str, str], dict[str, Any]]:
    """(profile, point) -> label, precision, fault, writable: what the profile says about showing it."""
    meta: dict[tuple[str, str], dict[str, Any]] = {}
    for name, profile in profiles.items():
        for p in profile.points:
            meta[(name, p.name)] = {
                "label": p.label or p.name.replace("_", " ").capitalize(),
                "precision": p.precision,
                "fault": p.fault,
                "writable": bool(getattr(p, "writable", False)),
                "enum": dict(getattr(p, "enum", {}) or {}),
            }
    return meta


def point_dict(now: float, name: str, pv: PointValue, meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = meta or {}
    is_fault = bool(meta.get("fault")) and isinstance(pv.value, int | float) and pv.value != 0
    return {
        "name": name,
        "title": meta.get("label") or name,
        "value": pv.value,
        "unit": pv.unit,
        "unit_shown": unit_shown(pv.unit),
        "precision": meta.get("precision"),
        "fault": bool(meta.get("fault")),
        "fault_set": is_fault,
        "writable": bool(meta.get("writable")),
        "enum": meta.get("enum") or {},
        "ts": pv.ts,
        "age_s": _age(now, pv.ts),
        "quality": pv.quality.name.lower(),
        "label": pv.label,
    }


def _age(now: float, ts: float | None) -> float | None:
    return None if ts is None else round(max(0.0, now - ts), 1)


def _damage(store: Store) -> dict[str, Any] | None:
    d = store.damage
    if d is None:
        return None
    return {
        "kind": d.kind,
        "detail": d.detail,
        "moved_aside": d.moved_aside,
        "old_buffer_id": d.old_buffer_id,
        "salvaged": d.salvaged,
        "lost_at_most": d.lost_at_most,
    }


def status_builder(
    live: Live | Callable[[], Live],
    store: Store | Callable[[], Store],
    config: ConfigState | None = None,
    *,
    profiles: Callable[[], dict[str, Profile]] = dict,
    extra: Callable[[], dict[str, Any]] = dict,
) -> StatusFn:
    """The function behind ``/api/status`` (and the page, which renders the same JSON).

    ``live`` and ``store`` may be given as functions: a restart of the agent's parts
    replaces them, and the page must read the current ones.
    """

    async def build() -> dict[str, Any]:
        live_now = live() if callable(live) else live
        store_now = store() if callable(store) else store
        return await _build(live_now, store_now, config, point_meta(profiles()), extra())

    return build


def device_dict(now: float, d: DeviceLive, meta: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """One device as the page shows it; its points in the profile's order."""
    return {
        "id": d.id,
        "profile": d.profile,
        "bus": d.bus,
        "state": d.state.value,
        "reason": d.reason,
        "state_since": d.state_since,
        "last_ok_age_s": _age(now, d.last_ok_ts),
        "last_ok_ts": d.last_ok_ts,
        "polls_ok": d.polls_ok,
        "polls_failed": d.polls_failed,
        "protocol": d.protocol,
        "address": d.address,
        "framing_errors": d.framing_errors,
        "rejected": d.rejected,
        "replayed": d.replayed,
        "rssi_dbm": d.rssi_dbm,
        "asset": d.asset,
        "points": [point_dict(now, name, pv, meta.get((d.profile, name))) for name, pv in d.points.items()],
        "last_error": d.errors[-1][1] if d.errors else None,
    }


async def _build(
    live: Live,
    store: Store,
    config: ConfigState | None,
    meta: dict[tuple[str, str], dict[str, Any]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    now = time.time()
    stats = await store.stats()
    oldest_all = [t for t in stats.oldest_unsent_ts.values() if t is not None]
    devices = [device_dict(now, d, meta) for d in live.devices.values()]
    uplinks = []
    for u in live.uplinks.values():
        uplinks.append(
            {
                "name": u.name,
                "kind": u.kind,
                "target": u.target,
                "last_result": u.last_result,
                "last_attempt_age_s": _age(now, u.last_attempt_ts),
                "last_success_age_s": _age(now, u.last_success_ts),
                "batches_sent": u.batches_sent,
                "readings_sent": u.readings_sent,
                "failures": u.failures,
                "bytes_sent": u.bytes_sent,
                "unsent": stats.unsent.get(u.name, 0),
                "oldest_unsent_age_s": _age(now, stats.oldest_unsent_ts.get(u.name)),
            }
        )
    return {
        "gateway": {
            "id": live.gateway_id,
            "version": __version__,
            "uptime_s": round(live.uptime_s, 1),
            "clock": clock_state().as_dict(),
            "config": config.as_dict() if config is not None else None,
            **extra,
        },
        "devices": devices,
        "buses": [
            {
                "name": b.name,
                "kind": b.kind,
                "target": b.target,
                "state": b.state,
                "detail": b.detail,
                "state_since": b.state_since,
                "transactions": b.transactions,
                "restarts": b.restarts,
            }
            for b in live.buses.values()
        ],
        "store": {
            "file_bytes": stats.file_bytes,
            "last_seq": stats.last_seq,
            "pending_commit": stats.pending_commit,
            "committed_total": stats.committed_total,
            "backlog": max(stats.unsent.values(), default=0),
            "oldest_unsent_age_s": _age(now, min(oldest_all)) if oldest_all else None,
            "class_bytes": stats.class_bytes,
            "dropped": stats.dropped,
            "last_error": stats.last_error,
            "buffer_id": stats.buffer_id,
            "produced_total": stats.produced_total,
            "salvage": stats.salvage,
            "damage": _damage(store),
        },
        "uplinks": uplinks,
        "alarms": live.alarms.as_list(),
        # Each rule's last evaluation and firing, its subjects' states, what it writes (None: no rules).
        "rules": live.rules_status() if live.rules_status is not None else None,
    }
