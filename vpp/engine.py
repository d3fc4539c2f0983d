"""The engine: the one place that wires adapters, fleet state and the loops in one TaskGroup.

`Engine.run` starts every adapter and loop as a named task, stops them all on SIGINT/SIGTERM,
on `stop()`, or after an optional duration of clock time, and returns a run summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from adapters.base import Adapter
from vpp.clock import Clock
from vpp.config import LoadedConfig
from vpp.domain import Aggregate
from vpp.fleet import Fleet
from vpp.metrics import Metrics

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


class _ShutdownError(Exception):
    """Raised inside the task group to end every task."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What an engine run did, for the CLI's closing lines and for tests."""

    started_at: datetime
    ended_at: datetime
    wall_s: float
    readings_accepted: int
    readings_rejected: int
    park: Aggregate
    enterprises: dict[str, Aggregate] = field(default_factory=dict)
    reason: str = "stopped"


class Engine:
    """Runs one park: adapters feed the fleet; loops read it."""

    def __init__(
        self,
        config: LoadedConfig,
        clock: Clock,
        adapters: Sequence[Adapter],
        *,
        metrics: Metrics | None = None,
        report: Reporter | None = None,
        report_every_s: float = 60.0,
    ) -> None:
        self.config = config
        self.park = config.park
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.fleet = Fleet(self.park, clock, metrics=self.metrics)
        self.adapters = list(adapters)
        self._check_routes()
        self._report = report
        self._report_every_s = report_every_s
        self._stop = asyncio.Event()
        self._stop_reason = "stopped"

    def stop(self, reason: str = "stopped") -> None:
        """Ask the engine to shut down; safe to call from a signal handler."""
        self._stop_reason = reason
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> RunSummary:
        """Run until stopped, signalled, or `duration_s` of clock time has passed."""
        started_at = self.clock.now()
        wall_start = time.monotonic()
        restore = self._install_signal_handlers()
        try:
            async with asyncio.TaskGroup() as group:
                for adapter in self.adapters:
                    group.create_task(adapter.run(self.fleet), name=f"adapter:{adapter.name}")
                group.create_task(self._monitor(), name="fleet-monitor")
                group.create_task(self._wait_for_stop(duration_s), name="stopper")
        except* _ShutdownError:
            pass
        finally:
            restore()
        self.fleet.update_gauges()
        return RunSummary(
            started_at=started_at,
            ended_at=self.clock.now(),
            wall_s=time.monotonic() - wall_start,
            readings_accepted=self.fleet.accepted,
            readings_rejected=self.fleet.rejected,
            park=self.fleet.aggregate(),
            enterprises={e: self.fleet.aggregate(e) for e in self.fleet.enterprise_ids},
            reason=self._stop_reason,
        )

    async def _wait_for_stop(self, duration_s: float | None) -> None:
        if duration_s is None:
            await self._stop.wait()
        else:
            waiter = asyncio.create_task(self._stop.wait(), name="stop-event")
            sleeper = asyncio.create_task(self.clock.sleep(duration_s), name="duration")
            try:
                done, _ = await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                if sleeper in done and not self._stop.is_set():
                    self._stop_reason = "duration reached"
            finally:
                for task in (waiter, sleeper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        raise _ShutdownError

    async def _monitor(self) -> None:
        """Refresh gauges and adapter states; print a live line every `report_every_s`."""
        next_report = 0.0
        elapsed = 0.0
        step = min(self._report_every_s, 5.0)
        while True:
            self.fleet.update_gauges()
            for adapter in self.adapters:
                health = adapter.health()
                connected = 1.0 if health.state.value == "connected" else 0.0
                self.metrics.adapter_connected.labels(adapter.name).set(connected)
            if self._report is not None and elapsed >= next_report:
                self._report(self.status_line())
                next_report += self._report_every_s
            await self.clock.sleep(step)
            elapsed += step

    def status_line(self) -> str:
        """One line about the fleet now, as the demo prints it."""
        now = self.clock.now().astimezone(self.park.tz)
        agg = self.fleet.aggregate()
        kinds = " ".join(
            f"{kind.value}={power / 1000:+.2f}" for kind, power in sorted(agg.by_kind_kw.items())
        )
        return (
            f"{now:%Y-%m-%d %H:%M:%S} park {agg.power_kw / 1000:+8.2f} MW | "
            f"available {agg.available}/{agg.assets} stale {agg.stale} offline {agg.offline} "
            f"degraded {agg.degraded} | MW by kind: {kinds}"
        )

    def _check_routes(self) -> None:
        served: dict[str, str] = {}
        for adapter in self.adapters:
            for asset_id in adapter.asset_ids:
                if asset_id in served:
                    raise ValueError(
                        f"asset {asset_id!r} is served by both {served[asset_id]} and {adapter.name}"
                    )
                served[asset_id] = adapter.name
        missing = [a for a in self.fleet.asset_ids if a not in served]
        if missing:
            log.warning("%d assets have no adapter: %s", len(missing), ", ".join(missing[:10]))

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass

        def restore() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)

        return restore
