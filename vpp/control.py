"""The real-time control loop: make the park follow its target by sending asset setpoints.

Each cycle (`park.engine.control_period_s`) the controller reads fresh telemetry from the
fleet, takes the target in force from the `TargetBook`, computes every asset's limits for the
next period, allocates the gap over the assets that may move (`dispatch.allocate`) and queues
setpoints. Sending is decoupled from the cycle: per adapter a bounded pool of workers takes
the newest setpoint of each asset, drops it if it expired, clamps it to the asset's limits
and sends it under a timeout. Assets that miss acks or do not follow are marked degraded and
left out (their share goes to the others) until they follow again or their probation ends;
assets whose telemetry goes stale are driven to their fallback (hold, release or safe value).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from adapters.base import Adapter
from dispatch.allocate import allocate
from vpp.clock import Clock
from vpp.config.schema import (
    AnyAsset,
    BatteryAsset,
    CurtailableLoad,
    EngineSettings,
    Generator,
    Park,
    PvAsset,
)
from vpp.domain import Availability, FallbackMode, Measurement, Setpoint, SetpointAck
from vpp.errors import VPPError
from vpp.fleet import Fleet
from vpp.limits import LimitModel, PvAvailability, Snapshot
from vpp.metrics import Metrics
from vpp.targets import Target, TargetBook

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

_FALLBACK_CODE = {FallbackMode.HOLD: 0, FallbackMode.RELEASE: 1, FallbackMode.SAFE: 2}
_FALLBACK_OF_CODE = {code: mode for mode, code in _FALLBACK_CODE.items()}
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # k * _GOLDEN mod 1 spreads any run of k evenly


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """Tuning of the control loop beyond what the park's engine settings say.

    Tolerances are fractions of an asset's static power span with a floor in kW.
    """

    send_timeout_s: float = 2.0
    max_in_flight_per_adapter: int = 256
    follow_tolerance_fraction: float = 0.05
    follow_tolerance_kw: float = 1.0
    deadband_fraction: float = 0.002
    fleet_deadband_fraction: float = 0.0
    probation_s: float = 60.0
    cap_memory_s: float = 30.0
    max_hold_s: float = 60.0
    integral_gain: float = 0.15
    integral_limit_fraction: float = 0.25
    settle_cycles: int = 4
    tier_width: float = 0.0
    costs: Mapping[str, float] | None = None
    pv_relax_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.send_timeout_s <= 0 or self.max_in_flight_per_adapter < 1:
            raise ValueError("ControlOptions: send_timeout_s and max_in_flight must be positive")
        if not 0.0 <= self.integral_gain < 1.0:
            raise ValueError("ControlOptions: integral_gain must lie in [0, 1)")
        if not 0.0 <= self.fleet_deadband_fraction < 1.0:
            raise ValueError("ControlOptions: fleet_deadband_fraction must lie in [0, 1)")


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one control cycle saw and did (`Controller.last_report`, API, dashboard)."""

    cycle: int
    at: datetime
    target_kw: float | None
    baseline_kw: float | None
    measured_kw: float
    error_kw: float | None
    error_ratio: float | None
    requested_change_kw: float
    allocated_kw: float
    saturated: bool
    controllable: int
    degraded: int
    stale: int
    in_fallback: int
    setpoints: int
    compute_s: float
    target_source: str = ""


def enrolled_cost(asset: AnyAsset) -> float:
    """Cost (per MWh) of moving an asset, from its enrollment: cheapest assets move first."""
    cost = asset.terms.compensation_per_mwh
    match asset:
        case BatteryAsset():
            cost += asset.degradation_cost_per_mwh
        case PvAsset():
            cost += asset.curtailment_cost_per_mwh
        case CurtailableLoad():
            cost += asset.cost_per_mwh
        case Generator():
            cost += asset.fuel_cost_per_mwh
        case _:
            pass
    return cost


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the setpoints queued by one cycle share."""

    cycle: int
    issued_at: datetime
    valid_until: datetime


class _Outbox:
    """Newest pending setpoint (batch, power) per asset for one adapter; workers drain it.

    The `Setpoint` itself is made by the worker that sends it, so a cycle that commands
    10,000 assets spends its time deciding, not building objects.
    """

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.pending: dict[int, tuple[_Batch, float]] = {}
        # The assets of `pending` in the order they were first queued: taking the oldest
        # from a dict (`next(iter(...))` then `pop`) costs a scan over the slots emptied
        # before it, quadratic over the tens of thousands one step commands.
        self._order: collections.deque[int] = collections.deque()
        self.wake = asyncio.Event()
        self.busy = 0

    def put(self, index: int, batch: _Batch, power_kw: float) -> None:
        """Queue a setpoint, replacing one of the asset's not sent yet (keeping its place)."""
        if index not in self.pending:
            self._order.append(index)
        self.pending[index] = (batch, power_kw)

    def take(self) -> tuple[int, _Batch, float]:
        """The setpoint queued longest ago (the outbox must not be empty)."""
        index = self._order.popleft()
        batch, power_kw = self.pending.pop(index)
        return index, batch, power_kw


class Controller:
    """Runs the control loop of one park; the engine runs `await controller.run()`."""

    def __init__(
        self,
        park: Park,
        fleet: Fleet,
        routes: Mapping[str, Adapter],
        clock: Clock,
        metrics: Metrics,
        targets: TargetBook,
        settings: EngineSettings | None = None,
        options: ControlOptions | None = None,
    ) -> None:
        self.park = park
        self.fleet = fleet
        self.clock = clock
        self.metrics = metrics
        self.targets = targets
        self.settings = settings if settings is not None else park.engine
        self.options = options if options is not None else ControlOptions()
        self.period_s = self.settings.control_period_s
        self.validity_s = self.settings.setpoint_validity_s
        self.resend_after_s = self.validity_s / 2

        assets = [a for _, a in park.iter_assets()]
        self.model = LimitModel(assets, park.tz)
        self.asset_ids = self.model.asset_ids
        n = len(assets)
        self.n = n
        span = self.model.static_upper_kw - self.model.static_lower_kw
        opts = self.options
        self._tolerance = np.maximum(
            opts.follow_tolerance_kw, opts.follow_tolerance_fraction * span
        )
        self._deadband = np.maximum(0.01, opts.deadband_fraction * span)
        self._fleet_deadband_kw = opts.fleet_deadband_fraction * float(np.sum(span))
        # An unchanged setpoint is refreshed from half its validity on. Assets are spread
        # over the time left before it must leave (a period to be queued, one to be sent and
        # the send timeout before it expires), so that the thousands commanded by one step
        # are not all refreshed again in one later cycle.
        latest_s = self.validity_s - 2 * self.period_s - opts.send_timeout_s
        spread = np.modf(np.arange(n) * _GOLDEN)[0]
        self._refresh_after_s = self.resend_after_s + spread * max(
            latest_s - self.resend_after_s, 0.0
        )
        costs = opts.costs or {}
        self._cost = np.array([costs.get(a.id, enrolled_cost(a)) for a in assets])
        self._fallback = np.array(
            [_FALLBACK_CODE[a.fallback or self.settings.fallback] for a in assets], dtype=np.int8
        )
        self._safe_kw = np.array(
            [0.0 if a.safe_power_kw is None else a.safe_power_kw for a in assets]
        )
        self._safe_kw = np.clip(
            self._safe_kw, self.model.static_lower_kw, self.model.static_upper_kw
        )
        self.is_pv = self.model.pv
        self.pv_estimate = PvAvailability(assets, park.location, relax_s=opts.pv_relax_s)
        # A PV setpoint is a cap on injection: the static lower bound (the inverter's rating)
        # is no cap at all, which is what the loop sends when it wants everything the sun gives.
        self._pv_free_kw = np.where(self.is_pv, self.model.static_lower_kw, np.nan)

        # adapters and routes
        self._outboxes: list[_Outbox] = []
        by_adapter: dict[int, int] = {}
        self._route = np.full(n, -1, dtype=np.int64)
        for i, asset_id in enumerate(self.asset_ids):
            adapter = routes.get(asset_id)
            if adapter is None:
                continue
            if id(adapter) not in by_adapter:
                by_adapter[id(adapter)] = len(self._outboxes)
                self._outboxes.append(_Outbox(adapter))
            self._route[i] = by_adapter[id(adapter)]
        self.routed = self._route >= 0
        self._route_list: list[int] = self._route.tolist()
        if not self.routed.all():
            missing = [a for a, r in zip(self.asset_ids, self.routed, strict=True) if not r]
            log.warning("control: %d assets have no route: %s", len(missing), missing[:10])

        # measured state (refreshed from the fleet each cycle)
        self._seen: list[Measurement | None] = [None] * n
        self._power = np.full(n, np.nan)
        self._soc = np.full(n, np.nan)
        self._temp = np.full(n, np.nan)
        self._arrived_cycle = np.full(n, -1, dtype=np.int64)
        self._assessed_power = np.full(n, np.nan)
        # commanded state
        self._sent_kw = np.full(n, np.nan)
        self._ref_kw = np.full(n, np.nan)
        self._sent_at = np.full(n, -np.inf)
        self._sent_cycle = np.full(n, -1, dtype=np.int64)
        self._valid_until = np.full(n, -np.inf)
        # health
        self._not_following = np.zeros(n, dtype=np.int64)
        self._missed_acks = np.zeros(n, dtype=np.int64)
        self._degraded = np.zeros(n, dtype=np.bool_)
        self._degraded_at = np.full(n, -np.inf)
        self._silent = np.zeros(n, dtype=np.bool_)  # degraded for missing acks
        # Bounds a device reported by applying less than asked (e.g. an EV depot with few
        # vehicles plugged in): respected until `_cap_until`.
        self._cap_low = np.full(n, -np.inf)
        self._cap_high = np.full(n, np.inf)
        self._cap_until = np.full(n, -np.inf)
        self._stale_since = np.full(n, np.nan)
        # limits in force for the final clamp before a setpoint leaves
        self._low = self.model.static_lower_kw.copy()
        self._high = self.model.static_upper_kw.copy()

        # Per-asset plan (the schedule behind the target): assets start from it each cycle.
        self._plan: FloatArray = np.zeros((n, 0))
        self._plan_start = 0.0
        self._plan_step_s = 1.0

        self._run_id = secrets.token_hex(3)
        self._cycle = 0
        self._bias_kw = 0.0
        self._settle = 0
        self._measured_before = np.zeros(n, dtype=np.bool_)  # fresh mask of the last dispatch
        self._saturated = False
        self._last_target_kw: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # A new target is acted on at once, not at the next tick.
        self._wake = asyncio.Event()
        self._cycled = asyncio.Event()
        targets.subscribe(self._wake.set)
        self.last_report: CycleReport | None = None
        # audit hooks: every setpoint as it leaves, every ack as it comes back
        self.sent_listeners: list[Callable[[Setpoint], None]] = []
        self.ack_listeners: list[Callable[[SetpointAck], None]] = []
        self.expired = 0
        self.clamped = 0
        self.sent = 0
        self.acked = 0
        self.refused = 0

    def degraded_ids(self) -> tuple[str, ...]:
        """Assets the loop has set aside for not following or not acknowledging."""
        return tuple(
            a for a, degraded in zip(self.asset_ids, self._degraded, strict=True) if degraded
        )

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run cycles every control period until cancelled, with one send pool per adapter."""
        async with asyncio.TaskGroup() as group:
            for k, outbox in enumerate(self._outboxes):
                for w in range(self.options.max_in_flight_per_adapter):
                    group.create_task(
                        self._worker(outbox), name=f"control-send:{outbox.adapter.name}:{k}.{w}"
                    )
            group.create_task(self._loop(), name="control-cycle")

    async def _loop(self) -> None:
        next_tick = self.clock.now()
        while True:
            self._wake.clear()
            self.cycle()
            # When late, skip the ticks we missed rather than run a burst of cycles; when the
            # clock was stepped back, do not wait the step out either.
            now = self.clock.now()
            period = timedelta(seconds=self.period_s)
            next_tick = min(max(next_tick + period, now), now + period)
            if await self._sleep_or_wake(next_tick):
                next_tick = self.clock.now()  # the cadence restarts from the early cycle

    async def _sleep_until(self, deadline: datetime) -> None:
        # The deadline is absolute: the task may start after the clock has moved. A deadline
        # more than a period away means the clock was stepped back: the tick is due now.
        while 0 < (remaining := (deadline - self.clock.now()).total_seconds()) <= self.period_s:
            await self.clock.sleep(remaining)

    async def _sleep_or_wake(self, deadline: datetime) -> bool:
        """Sleep until `deadline` (clock time); True if a target change cut the sleep short."""
        if self._wake.is_set():
            return True
        sleeper = asyncio.create_task(self._sleep_until(deadline), name="control-tick")
        waker = asyncio.create_task(self._wake.wait(), name="control-wake")
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)
        return self._wake.is_set() and not (sleeper.done() and not sleeper.cancelled())

    def set_plan(
        self, start: datetime, interval: timedelta, power_kw: Mapping[str, Sequence[float]]
    ) -> None:
        """Planned power per interval from `start` for some assets (the schedule behind the
        target). Each cycle a planned asset starts from its plan, not from where it is, and
        only what the plans and the other assets leave of the target is allocated: a battery
        then keeps the energy its plan keeps for later instead of answering every jump of
        the target alone. Replaces any earlier plan; an empty mapping drops it."""
        if start.tzinfo is None or interval <= timedelta(0):
            raise ValueError("Controller.set_plan: start must be aware and interval positive")
        length = max((len(v) for v in power_kw.values()), default=0)
        plan = np.full((self.n, length), np.nan)
        index = {a: i for i, a in enumerate(self.asset_ids)}
        for asset_id, values in power_kw.items():
            i = index.get(asset_id)
            if i is None:
                raise ValueError(f"Controller.set_plan: unknown asset {asset_id!r}")
            plan[i, : len(values)] = values
        self._plan = plan
        self._plan_start = start.timestamp()
        self._plan_step_s = interval.total_seconds()

    def _planned_at(self, t: float) -> FloatArray:
        k = math.floor((t - self._plan_start) / self._plan_step_s)
        if 0 <= k < self._plan.shape[1]:
            column: FloatArray = self._plan[:, k]
            return column
        return np.full(self.n, np.nan)

    @property
    def cycles_run(self) -> int:
        """How many cycles have run."""
        return self._cycle

    async def wait_cycle(self, after: int) -> CycleReport:
        """Wait until cycle number `after` + 1 has run; returns the latest report."""
        while self._cycle <= after or self.last_report is None:
            self._cycled.clear()
            await self._cycled.wait()
        return self.last_report

    async def wait_idle(self) -> None:
        """Wait until every queued setpoint has been sent and answered (or dropped)."""
        while not self._all_idle():
            self._idle.clear()
            await self._idle.wait()

    def _all_idle(self) -> bool:
        return all(not o.pending and o.busy == 0 for o in self._outboxes)

    # --- one cycle ---------------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        """Compute one cycle and queue its setpoints; returns the cycle's report."""
        started = time.perf_counter()
        now = self.clock.now()
        t = now.timestamp()
        self._cycle += 1
        fresh, offline, updated = self._refresh(now)
        power = self._power
        measured_kw = float(np.sum(power[fresh]))
        target = self.targets.target_at(now, measured_kw)

        transitions = self._assess_health(t, fresh, updated)
        pv_available = self._update_pv_available(t, now, fresh)
        limits = self.model.compute(
            Snapshot(power, self._soc, self._temp, fresh),
            now,
            horizon_s=self.validity_s,
            period_s=self.period_s,
            notice_min=None if target is None else target.notice_min,
            pv_available_kw=pv_available,
        )
        controllable = limits.controllable & self.routed & ~self._degraded
        low, high = limits.lower_kw, limits.upper_kw
        capped = self._cap_until > t
        if capped.any():
            high = np.where(capped, np.maximum(np.minimum(high, self._cap_high), low), high)
            low = np.where(capped, np.minimum(np.maximum(low, self._cap_low), high), low)
        # The final clamp lets a cap be lifted whatever the estimate says: an array capped
        # beyond what it has simply generates what it has.
        self._low = np.where(self.is_pv, self.model.static_lower_kw, low)
        self._high = high

        queued = 0
        requested = allocated = 0.0
        saturated = False
        error_kw: float | None = None
        if target is not None:
            error_kw = target.power_kw - measured_kw
            requested, allocated, saturated, queued = self._dispatch(
                t, now, target, error_kw, power, fresh, controllable, low, high, transitions,
            )  # fmt: skip
        else:
            self._bias_kw = 0.0
            self._last_target_kw = None
        stale = self.routed & ~fresh & ~offline & ~np.isnan(self._power)
        in_fallback, fallback_queued = self._fallbacks(t, now, stale)
        queued += fallback_queued
        if queued:
            self._idle.clear()

        compute_s = time.perf_counter() - started
        report = CycleReport(
            cycle=self._cycle,
            at=now,
            target_kw=None if target is None else target.power_kw,
            baseline_kw=None if target is None else target.baseline_kw,
            measured_kw=measured_kw,
            error_kw=error_kw,
            error_ratio=None if target is None else _error_ratio(target, measured_kw),
            requested_change_kw=requested,
            allocated_kw=allocated,
            saturated=saturated,
            controllable=int(np.count_nonzero(controllable)),
            degraded=int(np.count_nonzero(self._degraded)),
            stale=int(np.count_nonzero(stale)),
            in_fallback=in_fallback,
            setpoints=queued,
            compute_s=compute_s,
            target_source="" if target is None else target.source.value,
        )
        self._publish(report)
        self.last_report = report
        self._cycled.set()
        return report

    def _refresh(
        self, now: datetime
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Pull the latest measurements; returns fresh, offline and newly-updated masks."""
        fleet = self.fleet
        latest = [fleet.fresh(asset_id, now) for asset_id in self.asset_ids]
        seen = self._seen
        fresh = np.fromiter((m is not None for m in latest), np.bool_, self.n)
        changed = [i for i, m in enumerate(latest) if m is not None and m is not seen[i]]
        offline = np.zeros(self.n, dtype=np.bool_)
        for i in np.flatnonzero(~fresh).tolist():
            if fleet.availability(self.asset_ids[i], now) is Availability.OFFLINE:
                offline[i] = True
        updated = np.zeros(self.n, dtype=np.bool_)
        if changed:
            readings = [m for m in (latest[i] for i in changed) if m is not None]
            for i, m in zip(changed, readings, strict=True):
                seen[i] = m
            nan = math.nan
            self._power[changed] = [m.power_kw for m in readings]
            self._soc[changed] = [
                nan if m.soc_fraction is None else m.soc_fraction for m in readings
            ]
            self._temp[changed] = [
                nan if m.temperature_c is None else m.temperature_c for m in readings
            ]
            # Arrival order, not device timestamps, says whether a reading came after a send.
            self._arrived_cycle[changed] = self._cycle
            updated[changed] = True
        return fresh, offline, updated

    def _assess_health(
        self, t: float, fresh: npt.NDArray[np.bool_], updated: npt.NDArray[np.bool_]
    ) -> int:
        """Count assets that miss acks or do not follow; degrade and re-admit them.

        Returns how many assets changed state (the integral term waits for them to settle).
        """
        # Compare with what the device said it applied (it may have clamped the request).
        # A PV setpoint is a cap: what it follows is the cap sent (its ack says what it
        # generated then, which the sun may raise since), and generating less is following.
        sent = np.where(self.is_pv, self._sent_kw, self._ref_kw)
        active = ~np.isnan(sent) & (self._valid_until > t)
        power = self._power
        tolerance = self._tolerance
        gap = np.where(self.is_pv, np.maximum(sent - power, 0.0), np.abs(sent - power))
        previous_gap = np.where(
            self.is_pv,
            np.maximum(sent - self._assessed_power, 0.0),
            np.abs(sent - self._assessed_power),
        )
        # Only a reading that arrived after the setpoint left can show whether the asset
        # follows (it may still predate the device's response: `degraded_after_cycles`
        # allows for that lag).
        assess = active & updated & ~self._degraded & (self._arrived_cycle > self._sent_cycle)
        with np.errstate(invalid="ignore"):
            moving = gap <= previous_gap - 0.25 * tolerance
            following = (gap <= tolerance) | moving
        self._not_following = np.where(
            assess & ~following, self._not_following + 1, np.where(assess, 0, self._not_following)
        )
        self._assessed_power = np.where(updated, power, self._assessed_power)

        limit = self.settings.degraded_after_cycles
        newly = ~self._degraded & ((self._not_following >= limit) | (self._missed_acks >= limit))
        for i in np.flatnonzero(newly):
            self._degrade(int(i), t)
        with np.errstate(invalid="ignore"):
            # Following again re-admits an asset degraded for not following; one that lost
            # its acks can only show it is back by answering, so it waits out its probation.
            caught_up = active & (gap <= tolerance) & ~self._silent
        back = (
            self._degraded
            & fresh
            & ~newly
            & ((t - self._degraded_at >= self.options.probation_s) | caught_up)
        )
        for i in np.flatnonzero(back):
            self._readmit(int(i))
        return int(np.count_nonzero(newly) + np.count_nonzero(back))

    def _degrade(self, i: int, t: float) -> None:
        self._degraded[i] = True
        self._degraded_at[i] = t
        self._silent[i] = self._missed_acks[i] >= self.settings.degraded_after_cycles
        log.warning(
            "control: asset %s degraded (%d cycles not following, %d acks missed)",
            self.asset_ids[i],
            self._not_following[i],
            self._missed_acks[i],
        )
        self._not_following[i] = 0
        self._missed_acks[i] = 0
        self.fleet.mark_degraded(self.asset_ids[i], True)

    def _readmit(self, i: int) -> None:
        self._degraded[i] = False
        self._not_following[i] = 0
        self._missed_acks[i] = 0
        # Start again from what it does, not from what it was last told.
        self._sent_kw[i] = np.nan
        self._ref_kw[i] = np.nan
        self.fleet.mark_degraded(self.asset_ids[i], False)

    def _update_pv_available(
        self, t: float, now: datetime, fresh: npt.NDArray[np.bool_]
    ) -> FloatArray:
        """What each PV could generate (see `PvAvailability`); NaN for other assets.

        An array is uncapped when no cap of ours is in force, when the cap in force lets it
        run free, or when it generates clearly less than the cap allows.
        """
        sent = self._sent_kw
        with np.errstate(invalid="ignore"):
            uncapped = (
                np.isnan(sent)
                | (self._valid_until <= t)
                | (sent <= self._pv_free_kw)
                | (self._power > sent + self._tolerance)
            )
        return self.pv_estimate.update(now, self._power, fresh, uncapped)

    def _dispatch(
        self,
        t: float,
        now: datetime,
        target: Target,
        error_kw: float,
        power: FloatArray,
        fresh: npt.NDArray[np.bool_],
        controllable: npt.NDArray[np.bool_],
        lower: FloatArray,
        upper: FloatArray,
        transitions: int,
    ) -> tuple[float, float, bool, int]:
        active = ~np.isnan(self._ref_kw) & (self._valid_until > t)
        reference = np.where(active, self._ref_kw, power)
        # A PV's cap says how much it may generate, not how much it does: it is expected to
        # generate what it has, up to the cap.
        reference = np.where(self.is_pv, np.clip(reference, lower, upper), reference)
        planned = self._planned_at(t)
        reference = np.where(np.isnan(planned), reference, planned)
        uncontrolled = fresh & ~controllable
        expected = float(np.sum(reference[controllable]) + np.sum(power[uncontrolled]))

        # Integral term for what feed-forward cannot see (assets delivering a little short),
        # paused while a step, a degradation or a re-admission works its way through. Assets
        # entering or leaving the measured sum (telemetry gone stale or back) make the
        # measured power jump by what they draw: as large a jump counts as a step.
        previous = self._last_target_kw
        step_kw = 1.0 + 0.005 * abs(previous or 0.0)
        step = previous is None or abs(target.power_kw - previous) > step_kw
        regrouped = fresh != self._measured_before
        self._measured_before = fresh.copy()
        jump_kw = float(np.nansum(np.abs(power[regrouped])))
        if step or transitions or jump_kw > step_kw:
            self._settle = self.options.settle_cycles
        if self._settle > 0:
            self._settle -= 1
        elif not self._saturated:
            # (A saturated allocation cannot pass its bound: integrating would only wind up.)
            self._bias_kw += self.options.integral_gain * error_kw
        room = float(np.sum(upper[controllable] - lower[controllable]))
        bound = self.options.integral_limit_fraction * room
        self._bias_kw = min(max(self._bias_kw, -bound), bound)
        self._last_target_kw = target.power_kw

        change = target.power_kw + self._bias_kw - expected
        idx = np.flatnonzero(controllable)
        result = allocate(
            reference[idx],
            lower[idx],
            upper[idx],
            self._cost[idx],
            change,
            tier_width=self.options.tier_width,
        )
        new = result.power_kw
        self._saturated = result.saturated
        # A PV asked for all it has is sent no cap at all rather than a cap at the estimate,
        # so that it generates more when the sun gives more: no curtailment stays in force
        # that nobody asked for.
        deadband = self._deadband[idx]
        free = self.is_pv[idx] & (new <= lower[idx] + deadband)
        new = np.where(free, self._pv_free_kw[idx], new)
        sent = self._sent_kw[idx]
        with np.errstate(invalid="ignore"):
            moved = np.abs(new - sent)
            renew = (
                np.isnan(sent)
                | (t - self._sent_at[idx] >= self._refresh_after_s[idx])
                | (self._valid_until[idx] <= t)
            )
            changed = ~renew & (moved > deadband)
        due = renew | self._worth_sending(moved, changed, ~renew)
        chosen = idx[due]
        self._queue(chosen, new[due], now, t)
        return change, result.allocated_kw, result.saturated, int(chosen.size)

    def _worth_sending(
        self,
        moved: FloatArray,
        changed: npt.NDArray[np.bool_],
        optional: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """Which `changed` setpoints (moved beyond their asset's deadband) to send.

        Without a fleet deadband, all of them. With one, the smallest changes are held back
        as long as every change not sent (`optional` ones within their own deadband too)
        adds up to no more than it: a fleet of thousands then does not re-send every asset
        for a correction a few of them can make, and what is held back can miss the
        allocation by at most `fleet_deadband_fraction` of the fleet's span.
        """
        budget = self._fleet_deadband_kw - float(np.sum(moved[optional & ~changed]))
        if budget <= 0.0 or not changed.any():
            return changed
        where = np.flatnonzero(changed)
        order = np.argsort(moved[where], kind="stable")
        held = int(np.searchsorted(np.cumsum(moved[where][order]), budget, side="right"))
        worth = changed.copy()
        worth[where[order[:held]]] = False
        return worth

    def _fallbacks(self, t: float, now: datetime, stale: npt.NDArray[np.bool_]) -> tuple[int, int]:
        """Drive assets with stale telemetry to their fallback; returns (in fallback, queued)."""
        entering = stale & np.isnan(self._stale_since)
        for i in np.flatnonzero(entering & ~self._degraded):
            mode = _FALLBACK_OF_CODE[int(self._fallback[i])]
            self.metrics.fallbacks.labels(mode.value).inc()
            log.info("control: asset %s stale, fallback %s", self.asset_ids[i], mode.value)
        self._stale_since = np.where(stale, np.where(entering, t, self._stale_since), np.nan)
        candidates = stale & ~self._degraded
        # Their live limits are unknown: only the static range applies.
        self._low = np.where(candidates, self.model.static_lower_kw, self._low)
        self._high = np.where(candidates, self.model.static_upper_kw, self._high)
        due = (t - self._sent_at >= self._refresh_after_s) | (self._valid_until <= t)
        hold = (
            candidates
            & (self._fallback == _FALLBACK_CODE[FallbackMode.HOLD])
            & ~np.isnan(self._sent_kw)
            & (t - self._stale_since < self.options.max_hold_s)
        )
        safe = candidates & (self._fallback == _FALLBACK_CODE[FallbackMode.SAFE])
        with np.errstate(invalid="ignore"):
            safe_due = safe & (due | ~(self._sent_kw == self._safe_kw))
        held = np.flatnonzero(hold & due)
        self._queue(held, self._sent_kw[held], now, t)
        made_safe = np.flatnonzero(safe_due)
        self._queue(made_safe, self._safe_kw[made_safe], now, t)
        return int(np.count_nonzero(hold | safe)), int(held.size + made_safe.size)

    def _queue(
        self, indices: npt.NDArray[np.intp], values: FloatArray, now: datetime, t: float
    ) -> None:
        """Record and queue setpoints for assets `indices` (the newest per asset wins)."""
        if indices.size == 0:
            return
        self._sent_kw[indices] = values
        self._ref_kw[indices] = values
        self._sent_at[indices] = t
        self._sent_cycle[indices] = self._cycle
        self._valid_until[indices] = t + self.validity_s
        batch = _Batch(self._cycle, now, now + timedelta(seconds=self.validity_s))
        route = self._route_list
        outboxes = self._outboxes
        for i, value in zip(indices.tolist(), values.tolist(), strict=True):
            outboxes[route[i]].put(i, batch, value)
        for k in np.unique(self._route[indices]).tolist():
            outboxes[k].wake.set()

    def _publish(self, report: CycleReport) -> None:
        m = self.metrics
        m.cycle_duration.observe(report.compute_s)
        if report.compute_s > self.period_s:
            m.cycle_overruns.inc()
        if report.target_kw is not None and report.error_kw is not None:
            m.target_power.set(report.target_kw)
            m.tracking_error.set(report.error_kw)
            m.tracking_error_ratio.set(report.error_ratio or 0.0)

    # --- sending -----------------------------------------------------------------------------

    async def _worker(self, outbox: _Outbox) -> None:
        while True:
            while not outbox.pending:
                outbox.wake.clear()
                await outbox.wake.wait()
            index, batch, power_kw = outbox.take()
            setpoint = Setpoint(
                self.asset_ids[index],
                power_kw,
                batch.issued_at,
                batch.valid_until,
                f"{self._run_id}-{batch.cycle}-{index}",
            )
            outbox.busy += 1
            try:
                await self._deliver(outbox.adapter, index, setpoint)
            finally:
                outbox.busy -= 1
                if not outbox.pending and outbox.busy == 0 and self._all_idle():
                    self._idle.set()

    async def _deliver(self, adapter: Adapter, i: int, setpoint: Setpoint) -> None:
        if setpoint.expired(self.clock.now()):
            self.expired += 1
            self.metrics.setpoints_expired.inc()
            return
        # The last line of defence: whatever was computed, nothing leaves outside the limits.
        low, high = float(self._low[i]), float(self._high[i])
        value = setpoint.power_kw
        if math.isnan(value) or not low <= value <= high:
            clamped = low if math.isnan(value) else min(max(value, low), high)
            setpoint = dataclasses.replace(setpoint, power_kw=clamped)
            self.clamped += 1
            self.metrics.setpoints_clamped.inc()
        name = adapter.name
        self.sent += 1
        self.metrics.setpoints_sent.labels(name).inc()
        for listener in self.sent_listeners:
            listener(setpoint)
        started = time.perf_counter()
        reason = ""
        ack: SetpointAck | None = None
        try:
            async with asyncio.timeout(self.options.send_timeout_s):
                ack = await adapter.send(setpoint)
        except TimeoutError:
            reason = "timeout"
        except VPPError as err:
            reason = "error"
            log.debug("control: send to %s failed: %s", setpoint.asset_id, err)
        if ack is not None:
            for ack_listener in self.ack_listeners:
                ack_listener(ack)
        if ack is not None and not ack.accepted:
            reason = ack.reason or "refused"
        if ack is not None and ack.correlation_id != setpoint.correlation_id:
            reason = "mismatch"
        current = setpoint.correlation_id.endswith(f"-{self._sent_cycle[i]}-{i}")
        if reason:
            self.refused += 1
            self.metrics.setpoints_refused.labels(name, reason).inc()
            self._missed_acks[i] += 1
            return
        assert ack is not None
        self.acked += 1
        self.metrics.setpoints_acked.labels(name).inc()
        self.metrics.setpoint_latency.labels(name).observe(time.perf_counter() - started)
        self._missed_acks[i] = 0
        applied = ack.applied_power_kw
        if current and applied is not None and math.isfinite(applied):
            # The device said what it applied (it may have clamped): plan from that, and
            # do not ask beyond it again for a while.
            self._ref_kw[i] = applied
            slack = 1e-6 * max(abs(applied), 1.0)
            until = self.clock.now().timestamp() + self.options.cap_memory_s
            if applied < setpoint.power_kw - slack:
                self._cap_high[i] = applied
                self._cap_until[i] = until
            elif applied > setpoint.power_kw + slack:
                self._cap_low[i] = applied
                self._cap_until[i] = until


def _error_ratio(target: Target, measured_kw: float) -> float:
    """|target - measured| over |deviation| (over |target| when there is no deviation)."""
    error = abs(target.power_kw - measured_kw)
    scale = abs(target.deviation_kw)
    if scale < 1.0:
        scale = max(abs(target.power_kw), 1.0)
    return error / scale
