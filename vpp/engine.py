"""The engine: the one place that wires adapters, fleet, control, planning, API and storage.

`Engine.run` starts every adapter and loop as a named task in one TaskGroup, stops them all on
SIGINT/SIGTERM, on `stop()`, or after an optional duration of clock time, and returns a run
summary. Each part is optional so that tests and tools can run the slice they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from adapters.base import Adapter, ConnectionState
from dispatch.fanout import close_dask_clients
from dispatch.series import Horizon
from market.settlement import credit
from vpp.api import StateActions, TokenStore, create_app, serve
from vpp.carbon import (
    MeteredPeriod,
    account,
    daily_trend,
    grid_factor,
    indicators_path_for,
    load_indicators,
)
from vpp.clock import Clock
from vpp.config import LoadedConfig
from vpp.control import Controller, ControlOptions
from vpp.domain import Aggregate, DrEvent
from vpp.errors import VPPError
from vpp.fleet import Fleet
from vpp.metering import IntervalMeter
from vpp.metrics import Metrics
from vpp.planner import Planner, PriceSource
from vpp.recorder import Recorder
from vpp.state import ControlCycleView, DrEventView, EngineState, SettlementLine
from vpp.store import Store
from vpp.targets import TargetBook

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]
WITHIN_BAND = 0.05
KEEP_DAYS = 2  # metered energy and targets older than this are dropped
MAX_TRACKED_INTERVALS = (
    96 * 31
)  # interval tracking kept for the run summary  # an interval is "on target" when delivered within ±5 % of the award


class _ShutdownError(Exception):
    """Raised inside the task group to end every task."""


@dataclass(frozen=True, slots=True)
class IntervalTracking:
    """How one finished market interval went: committed vs delivered park energy."""

    start: datetime
    target_kwh: float | None
    delivered_kwh: float
    awarded: bool

    @property
    def error_ratio(self) -> float | None:
        if self.target_kwh is None or abs(self.target_kwh) < 1e-9:
            return None
        return abs(self.delivered_kwh - self.target_kwh) / abs(self.target_kwh)


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
    intervals: tuple[IntervalTracking, ...] = ()
    setpoints_sent: int = 0
    setpoints_acked: int = 0
    settlements: int = 0

    @property
    def within_band_share(self) -> float | None:
        """Share of finished intervals with a target delivered within ±5 %."""
        judged = [t.error_ratio for t in self.intervals if t.error_ratio is not None]
        return None if not judged else sum(r <= WITHIN_BAND for r in judged) / len(judged)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Which parts run besides adapters and fleet state."""

    control: bool = True
    control_options: ControlOptions | None = None
    prices: PriceSource | None = None  # plan and bid when given
    plan_today: bool = True
    plan_next_days: bool = True  # plan and bid each next day ahead of its gate closure
    serve_api: bool = False
    listen: str | None = None  # overrides park.engine.listen
    tokens: TokenStore | None = None
    store: Store | None = None


class Engine:
    """Runs one park: adapters feed the fleet; control, planning and accounting read it."""

    def __init__(
        self,
        config: LoadedConfig,
        clock: Clock,
        adapters: Sequence[Adapter],
        *,
        options: EngineOptions | None = None,
        metrics: Metrics | None = None,
        report: Reporter | None = None,
        report_every_s: float = 60.0,
    ) -> None:
        self.config = config
        self.park = config.park
        self.clock = clock
        self.options = options if options is not None else EngineOptions()
        self.metrics = metrics if metrics is not None else Metrics()
        self.fleet = Fleet(self.park, clock, metrics=self.metrics)
        self.adapters = list(adapters)
        self.routes = self._routes()
        self._report = report
        self._report_every_s = report_every_s
        self._stop = asyncio.Event()
        self._stop_reason = "stopped"
        self.address: tuple[str, int] | None = None
        self._final: tuple[Aggregate, dict[str, Aggregate]] | None = None

        self.targets = TargetBook()
        self.state = EngineState(self.park, str(config.path))
        self.controller = (
            Controller(
                self.park,
                self.fleet,
                self.routes,
                clock,
                self.metrics,
                self.targets,
                options=self.options.control_options,
            )
            if self.options.control
            else None
        )
        interval = timedelta(minutes=config.spot.interval_min)
        origin = datetime.combine(
            clock.now().astimezone(self.park.tz).date(), datetime.min.time(), tzinfo=self.park.tz
        )
        enterprise_of = {a.id: e.id for e, a in self.park.iter_assets()}
        self.meter = IntervalMeter(enterprise_of, origin, interval)
        self.fleet.listeners.append(self.meter.offer)
        self.store = self.options.store
        self.recorder = (
            Recorder(self.store, clock, self.metrics) if self.store is not None else None
        )
        if self.recorder is not None:
            self.fleet.listeners.append(self.recorder.offer)
            if self.controller is not None:
                recorder = self.recorder
                self.controller.sent_listeners.append(lambda s: recorder.audit_setpoints((s,)))
                self.controller.ack_listeners.append(lambda a: recorder.audit_acks((a,)))
        self.actions = StateActions(
            self.state,
            clock.now,
            config.path,
            config.markets_dir,
            on_reload=self._reload,
            on_dr_change=self._dr_change,
        )
        self.planner = (
            Planner(
                config,
                clock,
                self.fleet,
                self.targets,
                self.state,
                self.metrics,
                self.options.prices,
                store=self.store,
                replan_requests=self.actions.next_replan,
                report=self._say,
            )
            if self.options.prices is not None
            else None
        )
        self.tracking: list[IntervalTracking] = []
        self.settled_events: set[str] = set()
        self._factor = grid_factor(self.park.carbon, config.path.parent, self.park.timezone)
        indicators = indicators_path_for(config.path)
        self._indicators = load_indicators(indicators) if indicators.is_file() else None
        # The enrollment and adapters live as long as the engine: keep the collector off them.
        gc.freeze()

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the engine to shut down; safe to call from a signal handler."""
        self._stop_reason = reason
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> RunSummary:
        """Run until stopped, signalled, or `duration_s` of clock time has passed."""
        started_at = self.clock.now()
        wall_start = time.monotonic()
        restore = self._install_signal_handlers()
        if self.store is not None:
            await asyncio.to_thread(self.store.migrate)
            await self._restore_commitments()
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.options.serve_api:
                    await self._start_api(stack)
                async with asyncio.TaskGroup() as group:
                    for adapter in self.adapters:
                        group.create_task(adapter.run(self.fleet), name=f"adapter:{adapter.name}")
                    group.create_task(self._monitor(), name="fleet-monitor")
                    group.create_task(self._intervals(), name="interval-accounting")
                    if self.controller is not None:
                        group.create_task(self.controller.run(), name="control")
                        group.create_task(self._publish_control(), name="control-view")
                    if self.recorder is not None:
                        group.create_task(self.recorder.run(), name="recorder")
                    if self.planner is not None:
                        group.create_task(
                            self.planner.run(self.options.plan_today, self.options.plan_next_days),
                            name="planner",
                        )
                    group.create_task(self._wait_for_stop(duration_s), name="stopper")
        except* _ShutdownError:
            pass
        finally:
            restore()
            if self.park.engine.dispatch_scheduler is not None:
                await asyncio.to_thread(close_dask_clients)
        self.fleet.update_gauges()
        controller = self.controller
        final = self._final or (
            self.fleet.aggregate(),
            {e: self.fleet.aggregate(e) for e in self.fleet.enterprise_ids},
        )
        return RunSummary(
            started_at=started_at,
            ended_at=self.clock.now(),
            wall_s=time.monotonic() - wall_start,
            readings_accepted=self.fleet.accepted,
            readings_rejected=self.fleet.rejected,
            park=final[0],
            enterprises=final[1],
            reason=self._stop_reason,
            intervals=tuple(self.tracking),
            setpoints_sent=controller.sent if controller is not None else 0,
            setpoints_acked=controller.acked if controller is not None else 0,
            settlements=len(self.state.settlements),
        )

    async def _start_api(self, stack: contextlib.AsyncExitStack) -> None:
        tokens = self.options.tokens if self.options.tokens is not None else TokenStore.from_env()
        app = create_app(self.state, self.fleet, self.metrics, tokens, self.actions)
        listen = self.options.listen or self.park.engine.listen
        bound: tuple[str, int] = await stack.enter_async_context(serve(app, listen))
        self.address = bound
        host, port = bound
        shown = f"[{host}]" if ":" in host else host
        self._say(f"API and dashboard: http://{shown}:{port}/  (metrics at /metrics)")

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
        # what the fleet looked like when the run ended, before the tasks wind down
        self._final = (
            self.fleet.aggregate(),
            {e: self.fleet.aggregate(e) for e in self.fleet.enterprise_ids},
        )
        raise _ShutdownError

    # --- loops -----------------------------------------------------------------------------

    async def _monitor(self) -> None:
        """Refresh gauges and adapter states; print a live line every `report_every_s`."""
        next_report = 0.0
        elapsed = 0.0
        step = min(self._report_every_s, 5.0)
        while True:
            self.fleet.update_gauges()
            for adapter in self.adapters:
                connected = adapter.health().state is ConnectionState.CONNECTED
                self.metrics.adapter_connected.labels(adapter.name).set(1.0 if connected else 0.0)
            if self._report is not None and elapsed >= next_report:
                self._report(self.status_line())
                next_report += self._report_every_s
            await self.clock.sleep(step)
            elapsed += step

    async def _publish_control(self) -> None:
        """Copy each control cycle's report into the API's read model."""
        assert self.controller is not None
        last = None
        while True:
            await self.clock.sleep(self.park.engine.control_period_s)
            report = self.controller.last_report
            if report is None or report is last:
                continue
            last = report
            self.state.publish_control(
                ControlCycleView(
                    at=report.at,
                    target_kw=report.target_kw,
                    measured_kw=report.measured_kw,
                    setpoints_sent=report.setpoints,
                    setpoints_clamped=self.controller.clamped,
                    duration_s=report.compute_s,
                    degraded_assets=self.controller.degraded_ids(),
                )
            )

    async def _intervals(self) -> None:
        """At each market interval's end: tracking, DR settlement and the carbon account."""
        meter = self.meter
        current = meter.interval_number(self.clock.now())
        while True:
            boundary = meter.interval_start(current + 1)
            wait_s = (boundary - self.clock.now()).total_seconds()
            if wait_s > 0:
                await self.clock.sleep(wait_s + 0.5)  # let the last readings of the interval in
                continue
            self._close_interval(current)
            current += 1

    def _close_interval(self, number: int) -> None:
        start = self.meter.interval_start(number)
        hours = self.meter.interval_s / 3600.0
        energy = self.meter.energy_kwh(number)
        delivered = float(energy.sum())
        award = self.targets.award_at(start)
        scheduled = self.targets.scheduled_at(start)
        target_kw = award.power_kw if award is not None else scheduled
        events = self.targets.active_events(start)
        if target_kw is not None:
            target_kw -= sum(e.reduction_kw for e in events)
        tracking = IntervalTracking(
            start=start,
            target_kwh=None if target_kw is None else target_kw * hours,
            delivered_kwh=delivered,
            awarded=award is not None,
        )
        self.tracking.append(tracking)
        for event in self._events_ending(start + self.meter.interval):
            self._settle_event(event)
        self._publish_carbon(start + self.meter.interval)
        # a long-running engine keeps what the current and previous day's accounting needs
        kept_from = start - timedelta(days=KEEP_DAYS)
        self.meter.prune(kept_from)
        self.targets.prune(kept_from)
        if len(self.tracking) > MAX_TRACKED_INTERVALS:
            del self.tracking[: len(self.tracking) - MAX_TRACKED_INTERVALS]

    def _events_ending(self, moment: datetime) -> list[DrEvent]:
        ended = []
        for view in self.state.dr_event_list():
            event = view.event
            if event.end <= moment and event.event_id not in self.settled_events:
                ended.append(event)
        return ended

    def _settle_event(self, event: DrEvent) -> None:
        """Settle an ended DR event per enterprise against the planned baseline.

        The baseline of each enterprise is its scheduled energy over the event (the plan the
        market saw); a rule-set baseline from meter history (market.baseline) replaces it in
        the backtest and in reports once enough history is stored.
        """
        self.settled_events.add(event.event_id)
        dr = self.config.dr
        schedule = self.state.schedule
        if dr is None or schedule is None or not event.opted_in:
            return
        n_first = self.meter.interval_number(event.start)
        n_last = self.meter.interval_number(event.end)
        hours = self.meter.interval_s / 3600.0
        enterprise_ids = self.fleet.enterprise_ids
        metered = dict.fromkeys(enterprise_ids, 0.0)
        baseline = dict.fromkeys(enterprise_ids, 0.0)
        step = timedelta(minutes=schedule.interval_min)
        for number in range(n_first, n_last):
            energy = self.meter.energy_kwh(number)
            start = self.meter.interval_start(number)
            k = int((start - schedule.start) // step)
            for i, asset_id in enumerate(self.meter.asset_ids):
                enterprise = self.meter.enterprise_of[asset_id]
                metered[enterprise] += float(energy[i])
                planned = schedule.asset_kw.get(asset_id)
                if planned is not None and 0 <= k < len(planned):
                    baseline[enterprise] += planned[k] * hours
        total_baseline = sum(baseline.values())
        committed_total = event.reduction_kw * (n_last - n_first) * hours
        lines = []
        for enterprise in enterprise_ids:
            share = (
                baseline[enterprise] / total_baseline
                if total_baseline > 0
                else 1 / len(enterprise_ids)
            )
            committed = committed_total * share
            delivered = baseline[enterprise] - metered[enterprise]
            terms = credit(committed, delivered, dr.settlement)
            price_mwh = event.price_per_mwh / 1000.0
            lines.append(
                SettlementLine(
                    enterprise_id=enterprise,
                    reference=event.event_id,
                    start=event.start,
                    end=event.end,
                    baseline_kwh=baseline[enterprise],
                    metered_kwh=metered[enterprise],
                    delivered_kwh=delivered,
                    committed_kwh=committed,
                    revenue=terms.credited_kwh * price_mwh,
                    penalty=terms.penalised_kwh * price_mwh * dr.settlement.penalty_price_multiple,
                    currency=dr.currency,
                )
            )
        self.state.publish_settlements(lines)
        if self.store is not None:
            for line in lines:
                self.store.save_settlement(
                    line.start,
                    line.end,
                    "dr_event",
                    line.enterprise_id,
                    {
                        "event_id": event.event_id,
                        "baseline_kwh": line.baseline_kwh,
                        "metered_kwh": line.metered_kwh,
                        "delivered_kwh": line.delivered_kwh,
                        "target_kwh": line.committed_kwh,
                        "payment": line.revenue,
                        "penalty": line.penalty,
                        "currency": line.currency,
                    },
                )
        revenue = sum(line.revenue - line.penalty for line in lines)
        self._say(
            f"DR event {event.event_id} settled: {revenue:,.0f} {dr.currency} net over {len(lines)} enterprises"
        )

    def _publish_carbon(self, until: datetime) -> None:
        if self._indicators is None:
            return
        day_start = datetime.combine(
            until.astimezone(self.park.tz).date(), datetime.min.time(), tzinfo=self.park.tz
        )
        if until <= day_start:
            day_start -= timedelta(days=1)
        intervals = int((until - day_start) // self.meter.interval)
        if intervals <= 0:
            return
        horizon = Horizon(day_start, self.meter.interval, intervals)
        series = self.meter.mean_power_kw(horizon)
        try:
            accounted = account(
                self.park, MeteredPeriod(horizon, series), self._factor, self._indicators
            )
        except VPPError as err:
            log.warning("carbon account skipped: %s", err)
            return
        self.state.publish_carbon(
            until, accounted, daily_trend(accounted.park, horizon, self.park.timezone)
        )

    # --- API callbacks ---------------------------------------------------------------------

    async def _reload(self, loaded: LoadedConfig) -> None:
        """A reload is checked by the API; applying a new enrollment needs an engine restart."""
        added = {a.id for _, a in loaded.park.iter_assets()} - set(self.fleet.asset_ids)
        removed = set(self.fleet.asset_ids) - {a.id for _, a in loaded.park.iter_assets()}
        if added or removed:
            raise VPPError(
                f"the enrollment changed ({len(added)} assets added, {len(removed)} removed): "
                "restart the engine to apply it"
            )

    async def _dr_change(self, view: DrEventView) -> None:
        self.targets.add_event(view.event)
        if self.store is not None:
            await asyncio.to_thread(self.store.save_dr_event, view.event)

    async def _restore_commitments(self) -> None:
        """After a restart: the awards and DR events in force come back from the store."""
        assert self.store is not None
        now = self.clock.now()
        received = await asyncio.to_thread(
            self.store.received_awards, now - timedelta(days=1), now + timedelta(days=2)
        )
        awards = [award for award, _ in received]
        events = await asyncio.to_thread(
            self.store.dr_events, now - timedelta(days=1), now + timedelta(days=2)
        )
        for award, received_at in received:
            self.targets.add_award(award, received_at)
        self.state.publish_awards(awards)
        if self.planner is not None:
            # A day with awards in force has been bid and cleared: follow them, do not bid again.
            tz = self.park.tz
            self.planner.planned_days.update(a.interval.start.astimezone(tz).date() for a in awards)
        for event in events:
            self.targets.add_event(event)
            self.state.publish_dr_event(event)
        stored = await asyncio.to_thread(self.store.latest_schedule)
        if stored is not None and self.planner is not None:
            self.planner.restore(stored)
        if awards or events:
            self._say(f"restored {len(awards)} awards and {len(events)} DR events from storage")

    # --- helpers ---------------------------------------------------------------------------

    def status_line(self) -> str:
        """One line about the fleet now, as the demo prints it."""
        now = self.clock.now().astimezone(self.park.tz)
        agg = self.fleet.aggregate()
        kinds = " ".join(
            f"{kind.value}={power / 1000:+.2f}" for kind, power in sorted(agg.by_kind_kw.items())
        )
        target = self.targets.target_at(self.clock.now()) if self.controller is not None else None
        target_text = ""
        if target is not None and math.isfinite(target.power_kw):
            target_text = f" target {target.power_kw / 1000:+8.2f} MW ({target.source.value})"
        return (
            f"{now:%Y-%m-%d %H:%M:%S} park {agg.power_kw / 1000:+8.2f} MW{target_text} | "
            f"available {agg.available}/{agg.assets} stale {agg.stale} offline {agg.offline} "
            f"degraded {agg.degraded} | MW by kind: {kinds}"
        )

    def _say(self, line: str) -> None:
        log.info("%s", line)
        if self._report is not None:
            self._report(line)

    def _routes(self) -> dict[str, Adapter]:
        served: dict[str, Adapter] = {}
        for adapter in self.adapters:
            for asset_id in adapter.asset_ids:
                if asset_id in served:
                    raise ValueError(
                        f"asset {asset_id!r} is served by both {served[asset_id].name} and {adapter.name}"
                    )
                served[asset_id] = adapter
        missing = [a for a in self.fleet.asset_ids if a not in served]
        if missing:
            log.warning("%d assets have no adapter: %s", len(missing), ", ".join(missing[:10]))
        return served

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
