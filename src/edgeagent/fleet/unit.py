"""The fleet as one unit of the agent: its channels and its pipeline, started and stopped together.

Its slice is the ``[fleet]`` section, which only the local file sets: a push never
restarts it. Its one task runs the pipeline, the expiry watch and the channels in a
task group; a failure of any of them ends the task, and the supervisor sees it like a
dead bus poller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edgeagent.clock import kernel_synchronized
from edgeagent.config import SiteConfig
from edgeagent.fleet.channels import HttpChannel, MqttChannel
from edgeagent.fleet.compose import compose_for_reload
from edgeagent.fleet.pipeline import FleetHost, FleetService
from edgeagent.units import cancel_all


class FleetUnit:
    def __init__(
        self,
        site: SiteConfig,
        config_path: Path,
        host: FleetHost,
        *,
        running_version: int | None,
        clock_synchronized: Callable[[], bool | None] | None = None,
    ) -> None:
        assert site.fleet is not None
        self.name = "fleet"
        self.slice = site.fleet
        self.service = FleetService(
            site,
            config_path,
            host,
            running_version=running_version,
            clock_synchronized=clock_synchronized or kernel_synchronized,
        )
        self.channels: list[MqttChannel | HttpChannel] = []
        if site.fleet.mqtt is not None:
            self.channels.append(MqttChannel(site.fleet.mqtt, site.gateway.id, site.fleet.groups, self.service))
        if site.fleet.http is not None:
            self.channels.append(HttpChannel(site.fleet.http, site.gateway.id, self.service))
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def start(self) -> None:
        await self.service.start()
        self._task = asyncio.create_task(self._run(), name="fleet")

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.service.run(), name="fleet-pipeline")
            group.create_task(self.service.watch_expiry(), name="fleet-expiry")
            for channel in self.channels:
                group.create_task(channel.run(), name=f"fleet-{channel.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None

    def compose_for_reload(self, local: SiteConfig) -> SiteConfig:
        """SIGHUP: the re-read local file's bootstrap with the pushed config running now (if any)."""
        running = self.service.running
        payload = running.payload if running is not None else None
        return compose_for_reload(local, payload, self.service.config_path)
