"""Write what the engine sees and does to the database without stalling the event loop.

Accepted telemetry and the setpoint audit are queued in memory (bounded) and written in
batches from a worker thread; a full telemetry queue drops the oldest rows and counts them,
while audit rows are never dropped. The final flush runs on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from datetime import timedelta

from vpp.clock import Clock
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import VPPError
from vpp.metrics import Metrics
from vpp.store import Store

log = logging.getLogger(__name__)


class Recorder:
    """Batches telemetry and audit rows into the store."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        max_pending: int = 100_000,
        flush_every_s: float = 1.0,
        raw_window: timedelta = timedelta(days=7),
        rollup_every_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.max_pending = max_pending
        self.flush_every_s = flush_every_s
        self.raw_window = raw_window
        self.rollup_every_s = rollup_every_s
        self._telemetry: deque[Measurement] = deque()
        self._setpoints: list[Setpoint] = []
        self._acks: list[SetpointAck] = []
        self._last_rollup = time.monotonic()

    def offer(self, batch: Sequence[Measurement]) -> None:
        """Queue accepted telemetry (a Fleet listener); drops the oldest rows when full."""
        self._telemetry.extend(batch)
        overflow = len(self._telemetry) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._telemetry.popleft()
            self.metrics.storage_dropped.inc(overflow)

    def audit_setpoints(self, setpoints: Sequence[Setpoint]) -> None:
        self._setpoints.extend(setpoints)

    def audit_acks(self, acks: Sequence[SetpointAck]) -> None:
        self._acks.extend(acks)

    @property
    def pending(self) -> int:
        return len(self._telemetry) + len(self._setpoints) + len(self._acks)

    async def run(self) -> None:
        """Flush periodically until cancelled, then flush what is left."""
        try:
            while True:
                await asyncio.sleep(self.flush_every_s)
                await self.flush()
                if time.monotonic() - self._last_rollup >= self.rollup_every_s:
                    self._last_rollup = time.monotonic()
                    older_than = self.clock.now() - self.raw_window
                    await asyncio.to_thread(self.store.downsample, older_than)
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        telemetry = list(self._telemetry)
        self._telemetry.clear()
        setpoints, self._setpoints = self._setpoints, []
        acks, self._acks = self._acks, []
        if not (telemetry or setpoints or acks):
            return
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._write, telemetry, setpoints, acks)
        except VPPError as err:
            self.metrics.storage_errors.inc()
            log.error("storage write failed, will retry: %s", err)
            # put everything back in front so that the next flush retries it in order
            self._telemetry.extendleft(reversed(telemetry))
            self._setpoints[:0] = setpoints
            self._acks[:0] = acks
            return
        self.metrics.storage_write_duration.observe(time.perf_counter() - started)
        self.metrics.storage_written.labels("telemetry").inc(len(telemetry))
        self.metrics.storage_written.labels("setpoint_audit").inc(len(setpoints) + len(acks))

    def _write(
        self, telemetry: list[Measurement], setpoints: list[Setpoint], acks: list[SetpointAck]
    ) -> None:
        if setpoints:
            self.store.audit_setpoints(setpoints)
        if acks:
            self.store.audit_acks(acks)
        if telemetry:
            self.store.write_telemetry(telemetry)
