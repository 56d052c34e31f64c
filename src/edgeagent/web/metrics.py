"""``/metrics``: the agent's figures in the Prometheus text format, read from the live state at scrape time.

Nothing is counted twice: the collector reads the counters the agent already keeps (the
live picture, the store's stats, the hub's counts) when scraped. Names are
``edgeagent_*`` in base units with ``_total`` on counters; labels name only what the
config bounds (devices, buses, destinations, priority classes, drop reasons), never a
reading's value. The series are listed in docs/page.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from edgeagent import __version__
from edgeagent.hub import Topic
from edgeagent.store.types import StoreStats
from edgeagent.web.app import PAGE_KEY
from edgeagent.web.page import Page

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("unknown", "online", "degraded", "offline")


class Snapshot(Collector):
    """One scrape's metrics, from the page's host and the store stats read just before."""

    def __init__(self, page: Page, stats: StoreStats, now: float) -> None:
        self.page = page
        self.stats = stats
        self.now = now

    def collect(self) -> Iterator[Metric]:
        host = self.page.host
        live = host.live
        yield InfoMetricFamily("edgeagent_build", "Version of the agent", value={"version": __version__})
        yield GaugeMetricFamily("edgeagent_uptime_seconds", "Seconds since the agent started", value=live.uptime_s)

        polls = CounterMetricFamily("edgeagent_device_polls", "Polls per device by result", labels=["device", "result"])
        state = GaugeMetricFamily(
            "edgeagent_device_state", "1 for the state each device is in", labels=["device", "state"]
        )
        framing = CounterMetricFamily("edgeagent_device_framing_errors", "Losses of sync per device", labels=["device"])
        for d in live.devices.values():
            polls.add_metric([d.id, "ok"], d.polls_ok)
            polls.add_metric([d.id, "failed"], d.polls_failed)
            framing.add_metric([d.id], d.framing_errors)
            for s in STATES:
                state.add_metric([d.id, s], 1.0 if d.state.value == s else 0.0)
        yield from (polls, state, framing)

        tx = CounterMetricFamily("edgeagent_bus_transactions", "Answered transactions per bus", labels=["bus"])
        restarts = CounterMetricFamily(
            "edgeagent_bus_restarts", "Reopens of a bus's connection or radio", labels=["bus"]
        )
        up = GaugeMetricFamily("edgeagent_bus_up", "1 while the bus is usable", labels=["bus"])
        for b in live.buses.values():
            tx.add_metric([b.name], b.transactions)
            restarts.add_metric([b.name], b.restarts)
            up.add_metric([b.name], 1.0 if b.state == "ok" else 0.0)
        yield from (tx, restarts, up)

        yield from self._store()
        yield from self._uplinks()

        active = sum(1 for a in live.alarms.active())
        yield GaugeMetricFamily("edgeagent_alarms_active", "Alarms active now", value=active)
        yield CounterMetricFamily(
            "edgeagent_alarm_transitions", "Alarms raised or cleared", value=host.hub.published[Topic.ALARM]
        )
        rules_status = getattr(live, "rules_status", None)  # set by the agent while rules run
        if callable(rules_status):
            status = rules_status()
            rules = status.get("rules", []) if isinstance(status, dict) else []
            evaluations = sum(int(r.get("evaluations", 0)) for r in rules if isinstance(r, dict))
            yield CounterMetricFamily("edgeagent_rule_evaluations", "Rule evaluations", value=evaluations)
        hub = CounterMetricFamily("edgeagent_hub_published", "Entries published on the hub", labels=["topic"])
        for topic, n in host.hub.published.items():
            hub.add_metric([topic.value], n)
        yield hub
        yield GaugeMetricFamily("edgeagent_web_sessions", "Login sessions open", value=len(self.page.sessions or ()))
        yield GaugeMetricFamily("edgeagent_web_streams", "Browsers streaming live", value=self.page.streams)
        yield GaugeMetricFamily(
            "edgeagent_web_history_bytes", "Memory held by the page's chart history", value=self.page.history.bytes_held
        )

    def _store(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily("edgeagent_store_file_bytes", "Size of the buffer file", value=s.file_bytes)
        yield CounterMetricFamily("edgeagent_store_committed_readings", "Readings committed", value=s.committed_total)
        yield GaugeMetricFamily(
            "edgeagent_store_pending_readings", "Readings waiting to commit", value=s.pending_commit
        )
        class_bytes = GaugeMetricFamily("edgeagent_store_class_bytes", "Bytes held per class", labels=["class"])
        for cls, n in s.class_bytes.items():
            class_bytes.add_metric([cls], n)
        yield class_bytes
        dropped = CounterMetricFamily(
            "edgeagent_store_dropped_readings", "Readings dropped by class and reason", labels=["class", "reason"]
        )
        for cls, reasons in s.dropped.items():
            for reason, n in reasons.items():
                dropped.add_metric([cls, reason], n)
        yield dropped
        unsent = GaugeMetricFamily("edgeagent_store_unsent_readings", "Backlog per destination", labels=["destination"])
        oldest = GaugeMetricFamily(
            "edgeagent_store_oldest_unsent_age_seconds", "Age of the oldest unsent reading", labels=["destination"]
        )
        for name, n in s.unsent.items():
            unsent.add_metric([name], n)
            ts = s.oldest_unsent_ts.get(name)
            oldest.add_metric([name], max(0.0, self.now - ts) if ts is not None else 0.0)
        yield from (unsent, oldest)

    def _uplinks(self) -> Iterator[Metric]:
        labels = ["destination"]
        readings = CounterMetricFamily(
            "edgeagent_uplink_sent_readings", "Readings acknowledged upstream", labels=labels
        )
        batches = CounterMetricFamily("edgeagent_uplink_sent_batches", "Batches acknowledged upstream", labels=labels)
        sent = CounterMetricFamily("edgeagent_uplink_sent_bytes", "Compressed bytes acknowledged", labels=labels)
        failures = CounterMetricFamily("edgeagent_uplink_failures", "Failed sends", labels=labels)
        last_ok = GaugeMetricFamily(
            "edgeagent_uplink_last_success_timestamp_seconds", "When a batch was last acknowledged", labels=labels
        )
        for u in self.page.host.live.uplinks.values():
            readings.add_metric([u.name], u.readings_sent)
            batches.add_metric([u.name], u.batches_sent)
            sent.add_metric([u.name], u.bytes_sent)
            failures.add_metric([u.name], u.failures)
            last_ok.add_metric([u.name], u.last_success_ts or 0.0)
        yield from (readings, batches, sent, failures, last_ok)


def render(page: Page, stats: StoreStats, now: float) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(page, stats, now))
    return generate_latest(registry)


async def handler(request: web.Request) -> web.Response:
    import time

    page = request.app[PAGE_KEY]
    store: Any = page.host.store
    assert store is not None
    body = render(page, await store.stats(), time.time())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
