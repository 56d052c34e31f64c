"""A Vaisala PWD visibility sensor, polled on a serial line by the bus scheduler.

One poll is one exchange: send the poll command, then cut frames out of what arrives
until the addressed sensor's reply is complete. A garbled or foreign reply is counted
as a framing error and skipped, and the wait goes on, as pymodbus does with a bad CRC;
if no good reply comes in time the poll times out and the scheduler retries. Values the
sensor reports as slashes become absent values flagged missing, never zeros; a hardware
warning or error flags the measurements uncertain.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from edgeagent.config import DeviceConfig
from edgeagent.devices.scheduler import Transact
from edgeagent.errors import DecodeError, DeviceTimeout
from edgeagent.model import Quality, Reading
from edgeagent.profiles import PwdProfile
from edgeagent.protocols.vaisala_pwd import PwdFramer, PwdMessage2, decode_message2, decode_message7, encode_poll
from edgeagent.transports.serial import SerialLine

_STATUS_FIELDS = frozenset({"visibility_alarm", "hardware_status"})
DEFAULT_SENSOR_ID = "1"


class PwdDevice:
    """One PWD sensor id on a serial line."""

    protocol = "vaisala_pwd"

    def __init__(self, cfg: DeviceConfig, profile: PwdProfile) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.profile = profile
        self.sensor_id = cfg.sensor_id or DEFAULT_SENSOR_ID
        self.poll_interval_s = cfg.poll_interval_s or profile.default_poll_interval_s
        self.timeout_s = (cfg.timeout_ms or profile.response_timeout_ms) / 1000
        self._framer = PwdFramer()
        self._decode = decode_message7 if profile.message == 7 else decode_message2
        self._framing_errors = 0

    @property
    def address(self) -> str:
        return f"id {self.sensor_id}"

    @property
    def framing_errors(self) -> int:
        return self._framing_errors

    async def poll(self, line: SerialLine, transact: Transact) -> list[Reading]:
        message: PwdMessage2 = await transact(lambda: self._exchange(line))
        return self.readings(message, time.time())

    async def _exchange(self, line: SerialLine) -> PwdMessage2:
        line.discard_input()  # a late answer to an earlier poll is not this poll's answer
        self._framer.reset()
        skipped = self._framer.skipped_bytes
        garbled = False
        try:
            line.write(encode_poll(self.sensor_id, self.profile.message))
            deadline = time.monotonic() + self.timeout_s
            last_problem = ""
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise DeviceTimeout("deadline passed")
                    chunk = await line.read(remaining)
                except DeviceTimeout as exc:
                    detail = f" (the reply was garbled: {last_problem})" if last_problem else ""
                    raise DeviceTimeout(
                        f"no valid answer from PWD {self.sensor_id} on {line.label} within {self.timeout_s:g} s{detail}"
                    ) from exc
                for frame in self._framer.feed(chunk):
                    try:
                        message = self._decode(frame)
                    except DecodeError as exc:
                        garbled = True
                        last_problem = str(exc)
                        continue
                    if message.sensor_id.strip() == self.sensor_id:
                        return message
        finally:
            # One exchange with noise, a cut or an undecodable reply is one framing error.
            if garbled or self._framer.skipped_bytes > skipped or self._framer.buffered_bytes:
                self._framing_errors += 1

    def readings(self, message: PwdMessage2, ts: float) -> list[Reading]:
        """The profile's points out of one decoded message."""
        faulty = message.hardware_status not in (0, None)
        out = []
        for p in self.profile.points:
            raw = getattr(message, p.field)
            if raw is None:
                out.append(Reading(self.id, p.name, ts, None, p.unit, Quality.MISSING))
                continue
            value = round(float(raw) * p.scale + p.offset, 9)
            quality = Quality.UNCERTAIN if faulty and p.field not in _STATUS_FIELDS else Quality.GOOD
            out.append(Reading(self.id, p.name, ts, value, p.unit, quality))
        return out

    def labels(self, readings: Sequence[Reading]) -> dict[str, str]:
        return {}
