"""End-to-end backtest: the park bids, clears, is controlled and settled, day by day.

For every market day: forecast the park from the meter history gathered so far, plan at
forecast prices, turn the plan into bid curves, check them against the market's rules, clear
them against the actual prices, follow the awards with the real-time controller driving the
simulated assets on a stepped clock, meter every interval, settle it and account its carbon.
The same simulated park run under local control alone (same seed, same weather and noise) is
the baseline against which revenue is counted, and it gives the realised loads from which the
perfect-foresight optimum of each day is solved. Definitions: docs/backtest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from adapters.sim import DEFAULT_CLOUDINESS, GeneratorModel, SimAdapter
from dispatch.bids import (
    BidOptions,
    build_dr_offers,
    curves_from_samples,
    net_park_kw,
    sample_bid_points,
    spare_dr_offers,
)
from dispatch.flexibility import build_envelope, notice_of
from dispatch.forecast import forecast_park
from dispatch.problem import DispatchProblem, build_problem
from dispatch.series import AssetForecast, FloatArray, Horizon, ParkForecast
from dispatch.solve import Schedule, SolveOptions, solve
from market.baseline import BaselineError, compute_baselines
from market.formats import Submission
from market.prices import PriceSeries, synthetic_prices
from market.rules import DemandResponseRules, RuleSetBase, SpotMarketRules
from market.settlement import EventSettlement, SettlementError, settle_event
from market.simulator import MarketSimulator, dr_calls_from_prices
from market.validate import dr_offer_errors, spot_bid_errors
from vpp.carbon import (
    GridEmissionFactor,
    IndicatorConfig,
    MeteredPeriod,
    account,
    local_day_horizon,
)
from vpp.config.loader import LoadedConfig
from vpp.config.schema import (
    AnyAsset,
    BatteryAsset,
    CurtailableLoad,
    EvCharging,
    Generator,
    Park,
    PvAsset,
    ShiftableLoad,
    ThermalLoad,
)
from vpp.control import Controller, ControlOptions
from vpp.domain import BidCurve, BidStep, DrEvent, Interval, Setpoint
from vpp.errors import VPPError
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.targets import TargetBook

log = logging.getLogger(__name__)

#: Bids go in this long before the market's gate closes for the delivery day.
SUBMIT_BEFORE_GATE = timedelta(minutes=30)
#: Awards come back this long after the submission.
CLEARING_DELAY = timedelta(hours=1)
#: Synthetic prices start this many days before the first backtest day (for `last_week`).
SYNTHETIC_LEAD_DAYS = 7
#: An interval is "within 5 %" when |delivered - awarded| <= this share of |awarded| ...
WITHIN_SHARE = 0.05
#: ... or at most this many kW (a near-zero award cannot be met to a fraction of a watt).
WITHIN_FLOOR_KW = 1.0
#: Default first day when the prices are synthetic: a Monday in early summer.
DEFAULT_START = date(2025, 6, 2)
#: The simulated grid calls demand response over the day's most expensive tenth of intervals
#: (as the engine's simulated market does).
DR_TRIGGER_QUANTILE = 0.9
#: Kinds whose scheduled power the control loop starts from (`BacktestOptions.asset_plans`).
PLANNED_KINDS = (BatteryAsset, ThermalLoad, EvCharging)
#: A simulated device answers at once: a few sending workers suffice, and each one more is a
#: task woken for every setpoint.
CONTROL_OPTIONS = ControlOptions(max_in_flight_per_adapter=4)


class BacktestError(VPPError):
    """A backtest cannot run on these inputs; the message names the input or day at fault."""


class Follow(StrEnum):
    """How the schedule behind the awards is made once the market has cleared."""

    CLEARED = "cleared"  # re-plan at the cleared prices (flat bids: the plan they were made of)
    TARGET = "target"  # re-plan at forecast prices with the awards as a target (time-limited)
    PLAN = "plan"  # keep the plan at the forecast prices


class PriceForecast(StrEnum):
    """The prices the park plans and bids at (the market clears at the actual series)."""

    NOISY = "noisy"  # actual + a seeded day-level bias and interval noise
    LAST_WEEK = "last_week"  # the same interval seven days before
    PERFECT = "perfect"  # the actual prices


@dataclass(frozen=True, slots=True)
class BacktestOptions:
    """How a backtest runs.

    `control_period_s` is the real-time loop's period in simulated time; it must divide the
    market interval. `price_noise_fraction` scales the noisy forecast: its interval noise has
    this standard deviation times the day's mean absolute price, and its day-level bias half
    of that. `bid_offsets` are the relative price shifts the bid curves are sampled at
    (None: the bid builder's default set). With `demand_response` the park offers its DR
    product's capacity every day whose baseline its meter history allows; `warmup_days` of
    local control come before the first bid day (None: as many as the product's baseline
    method needs, see `warmup_days_for`). The simulated grid calls DR where the day's price
    reaches its `dr_trigger_quantile`. With `asset_plans` the control loop starts
    batteries, thermal loads and EV depots from their scheduled power each cycle (see
    `Controller.set_plan`) rather than following the aggregate target alone.
    """

    days: int = 1
    start: date | None = None
    seed: int = 0
    control_period_s: float = 60.0
    price_forecast: PriceForecast = PriceForecast.NOISY
    price_noise_fraction: float = 0.1
    bid_offsets: tuple[float, ...] | None = None
    bid_bounds: bool = True
    scenario_time_limit_s: float = 10.0
    solver_time_limit_s: float | None = None  # None: the park's engine setting
    mip_gap: float | None = None  # None: the park's engine setting
    cloudiness: float = DEFAULT_CLOUDINESS
    follow: Follow = Follow.CLEARED
    demand_response: bool = True
    asset_plans: bool = True
    warmup_days: int | None = None  # None: enough history for the DR product's baseline
    dr_trigger_quantile: float = DR_TRIGGER_QUANTILE

    def __post_init__(self) -> None:
        if self.days < 1:
            raise BacktestError(f"days must be at least 1, not {self.days}")
        if self.warmup_days is not None and not 0 <= self.warmup_days <= 366:
            raise BacktestError(f"warm-up of {self.warmup_days} days is outside 0-366")
        if not 0 < self.dr_trigger_quantile < 1:
            raise BacktestError("the DR trigger quantile must lie in (0, 1)")
        if not 0.1 <= self.control_period_s <= 300:
            raise BacktestError(f"control period {self.control_period_s:g} s is outside 0.1-300 s")
        if not 0 <= self.price_noise_fraction <= 5:
            raise BacktestError("price noise fraction must lie in [0, 5]")


@dataclass(frozen=True, slots=True)
class IntervalResult:
    """One market interval as settled. Power in kW (positive = drawn), money in currency.

    `revenue` = (baseline_kw - delivered_kw) × h / 1000 × price: what the park's metered
    energy cost less than under local control. `penalty` charges the deviation from the target
    (the award less any DR reduction called) beyond the tolerance band; `optimum_revenue` is
    `revenue` of the perfect-foresight plan.
    """

    start: datetime
    price_per_mwh: float
    forecast_price_per_mwh: float
    bid_min_kw: float  # the bid curve's power at the price cap
    bid_max_kw: float  # ... and at the price floor
    planned_kw: float  # the plan at forecast prices
    awarded_kw: float
    dr_reduction_kw: float  # reduction called by DR events in force
    target_kw: float  # awarded_kw - dr_reduction_kw: what the park was asked to deliver
    delivered_kw: float
    baseline_kw: float  # the park under local control
    optimum_kw: float
    revenue: float
    optimum_revenue: float
    penalty: float
    penalised_kwh: float
    within_5pct: bool


@dataclass(frozen=True, slots=True)
class DayResult:
    """What happened on one day: solver outcomes and timings."""

    day: date
    bid_solves: int
    failed_scenarios: int
    bid_fallback: str  # "" when the sampled curves were submitted
    price_responsive_curves: int
    follow_status: str
    optimum_status: str
    dr_offers: int  # intervals offered to the DR product
    dr_events: int
    dr_note: str  # why no DR was offered ("" when it was, or no product runs)
    wall_s: float
    bid_s: float
    follow_s: float
    optimum_s: float
    control_s: float
    control_cycles: int


@dataclass(frozen=True, slots=True)
class EnterpriseResult:
    """One enterprise's share: its metered energy bill against its local-control baseline."""

    enterprise_id: str
    revenue: float
    cost: float
    optimum_revenue: float
    energy_kwh: float
    baseline_energy_kwh: float
    dr_revenue: float = 0.0
    dr_penalties: float = 0.0


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """Everything a backtest measured; `summary` is what `summary.json` holds."""

    summary: dict[str, Any]
    intervals: tuple[IntervalResult, ...]
    days: tuple[DayResult, ...]
    enterprises: tuple[EnterpriseResult, ...]
    bid_curves: tuple[BidCurve, ...]
    dr_settlements: tuple[EventSettlement, ...] = ()


# --- prices -------------------------------------------------------------------------------------


def backtest_days(
    park: Park, rules: SpotMarketRules, prices: PriceSeries | None, options: BacktestOptions
) -> list[date]:
    """The local market days to run: from `options.start` (default: the first whole day of the
    price file, or DEFAULT_START for synthetic prices), `options.days` of them."""
    first = options.start
    if first is None:
        if prices is None:
            first = DEFAULT_START
        else:
            local = prices.start.astimezone(rules.tz)
            first = local.date()
            if local.time() != clock_time(0):
                first += timedelta(days=1)
    return [first + timedelta(days=d) for d in range(options.days)]


def warmup_days_for(first_day: date, rules: RuleSetBase) -> int:
    """Days of history before `first_day` that hold as many normal working days (by the rule
    set's calendar) as its baseline method needs: 7 for the last 5 working days before a
    Monday, more across holidays."""
    need = rules.baseline.required_days
    found = 0
    back = 0
    while found < need and back < rules.baseline.max_lookback_days:
        back += 1
        if rules.calendar.is_working_day(first_day - timedelta(days=back)):
            found += 1
    return back


def synthetic_series(
    days: Sequence[date], rules: SpotMarketRules, seed: int, lead_days: int = SYNTHETIC_LEAD_DAYS
) -> PriceSeries:
    """A seeded synthetic provincial spot series covering `days` and `lead_days` before them."""
    first = days[0] - timedelta(days=lead_days)
    start = local_day_horizon(first, rules.timezone, rules.interval).start
    end = local_day_horizon(days[-1], rules.timezone, rules.interval).end
    horizon = Horizon(start, rules.interval, int((end - start) // rules.interval))
    offset = start.astimezone(rules.tz).utcoffset()
    offset_h = offset.total_seconds() / 3600 if offset is not None else 0.0
    values = synthetic_prices(horizon, seed=seed, local_offset_h=offset_h)
    clipped = np.clip(values, rules.price_floor_per_mwh, rules.price_cap_per_mwh)
    return PriceSeries(start, rules.interval, clipped, source=f"synthetic(seed={seed})")


def forecast_prices(
    actual: PriceSeries,
    horizon: Horizon,
    method: PriceForecast,
    noise_fraction: float,
    rng: np.random.Generator,
) -> FloatArray:
    """The prices the park plans at for `horizon` (see PriceForecast)."""
    real = actual.on(horizon)
    if method is PriceForecast.PERFECT:
        return real
    if method is PriceForecast.LAST_WEEK:
        week = Horizon(horizon.start - timedelta(days=7), horizon.interval, horizon.intervals)
        return actual.on(week)
    scale = noise_fraction * max(float(np.mean(np.abs(real))), 1.0)
    bias = rng.normal(0.0, 0.5 * scale)
    return np.asarray(real + bias + rng.normal(0.0, scale, real.size), dtype=np.float64)


# --- the simulated clock ------------------------------------------------------------------------


class SteppedClock:
    """Simulated time that moves only when the backtest moves it, in two steps.

    `set` moves time without waking anyone, so the backtest can step the physics and deliver
    the telemetry of the new moment; `wake` then releases the sleepers that are due, and the
    controller's loop runs its cycle on fresh readings. (`vpp.clock.ManualClock.advance` does
    both at once, which would let the cycle run before the readings of its own moment.)
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("SteppedClock start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        """Move time to `moment` (never back); sleepers wait for `wake`."""
        if moment < self._now:
            raise ValueError("SteppedClock cannot go back in time")
        self._now = moment.astimezone(UTC)

    def wake(self) -> None:
        """Release every sleeper whose time has come."""
        due = [(at, f) for at, f in self._sleepers if at <= self._now]
        self._sleepers = [(at, f) for at, f in self._sleepers if at > self._now]
        for _, future in due:
            if not future.done():
                future.set_result(None)

    async def sleep(self, seconds: float) -> None:
        wake_at = self._now + timedelta(seconds=max(seconds, 0.0))
        if wake_at <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((wake_at, future))
        await future


# --- money and carbon ---------------------------------------------------------------------------


def operating_cost(
    assets: Sequence[AnyAsset],
    power_kw: FloatArray,
    baseline_kw: FloatArray,
    hours: float,
    starts: Sequence[int] | None = None,
) -> FloatArray:
    """Cost per asset of moving it, as the dispatch objective counts it (currency).

    `power_kw` and `baseline_kw` are (assets × intervals); the baseline is what each asset
    does under local control. Batteries pay degradation on throughput, PV its curtailment
    (generation below the baseline), curtailable loads their reduction below the baseline,
    generators fuel on output plus start-ups (`starts` per asset; default: counted from off
    to on transitions in `power_kw`).
    """
    cost = np.zeros(len(assets))
    for i, asset in enumerate(assets):
        p = power_kw[i]
        match asset:
            case BatteryAsset():
                per_mwh = asset.degradation_cost_per_mwh + asset.terms.compensation_per_mwh
                cost[i] = float(np.abs(p).sum()) * hours / 1000 * per_mwh
            case PvAsset():
                curtailed = np.maximum(p - baseline_kw[i], 0.0)
                per_mwh = asset.curtailment_cost_per_mwh + asset.terms.compensation_per_mwh
                cost[i] = float(curtailed.sum()) * hours / 1000 * per_mwh
            case CurtailableLoad():
                reduced = np.maximum(baseline_kw[i] - p, 0.0)
                per_mwh = asset.cost_per_mwh + asset.terms.compensation_per_mwh
                cost[i] = float(reduced.sum()) * hours / 1000 * per_mwh
            case Generator():
                output = np.maximum(-p, 0.0)
                if starts is not None:
                    count = starts[i]
                else:
                    on = output > 1e-6
                    count = int(np.count_nonzero(on[1:] & ~on[:-1])) + int(on[:1].sum())
                cost[i] = (
                    float(output.sum()) * hours / 1000 * asset.fuel_cost_per_mwh
                    + count * asset.startup_cost
                )
            case _:
                pass
    return cost


def emissions_t(
    park: Park,
    horizon: Horizon,
    asset_ids: Sequence[str],
    power_kw: FloatArray,
    factor: GridEmissionFactor,
    indicators: IndicatorConfig | None,
) -> float:
    """Emissions (tCO2) of metered asset power: vpp.carbon's account when the indicator file is
    known, else grid import × factor + generator output × its emission factor."""
    by_asset = {a: np.asarray(power_kw[i], dtype=float) for i, a in enumerate(asset_ids)}
    if indicators is not None:
        result = account(park, MeteredPeriod(horizon, by_asset), factor, indicators)
        return result.park.totals().emission_t
    net = power_kw.sum(axis=0)
    grid_kg = float((np.maximum(net, 0.0) * horizon.hours * factor.at(horizon.starts())).sum())
    fuel_kg = 0.0
    for i, (_, asset) in enumerate(park.iter_assets()):
        if isinstance(asset, Generator):
            output = np.maximum(-power_kw[i], 0.0) * horizon.hours
            fuel_kg += float(output.sum()) * asset.emission_kg_per_kwh
    return (grid_kg + fuel_kg) / 1000


# --- progress -----------------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on a stream: redrawn in place on a terminal, one line per
    update elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.started = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: float, label: str) -> None:
        share = min(max(done / self.total, 0.0), 1.0)
        filled = round(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.started
        line = f"backtest [{bar}] {100 * share:5.1f}% {elapsed:7.1f} s  {label}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --- the run ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Meters:
    """Energy per asset and interval (kWh), filled as the simulation passes interval ends."""

    kwh: FloatArray
    filled: int = 0


@dataclass(slots=True)
class _Day:
    """What the market side decided for one day, kept for settlement and plots."""

    horizon: Horizon
    price: FloatArray
    forecast_price: FloatArray
    curves: list[BidCurve]
    planned_kw: FloatArray
    awarded_kw: FloatArray
    schedule: Schedule | None
    forecast: ParkForecast
    result: dict[str, Any] = field(default_factory=dict)


class Backtest:
    """One backtest of one park; `run()` returns its result (see module docstring)."""

    def __init__(
        self,
        loaded: LoadedConfig,
        options: BacktestOptions,
        prices: PriceSeries | None = None,
        *,
        factor: GridEmissionFactor | None = None,
        indicators: IndicatorConfig | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.loaded = loaded
        self.park = loaded.park
        self.rules = loaded.spot
        self.options = options
        interval_s = self.rules.interval.total_seconds()
        ticks = interval_s / options.control_period_s
        if abs(ticks - round(ticks)) > 1e-9:
            raise BacktestError(
                f"control period {options.control_period_s:g} s does not divide the "
                f"{self.rules.interval_min}-min market interval"
            )
        self.ticks_per_interval = round(ticks)
        self.days = backtest_days(self.park, self.rules, prices, options)
        self.dr_rules: DemandResponseRules | None = loaded.dr if options.demand_response else None
        warmup = options.warmup_days
        if warmup is None:
            warmup = 0 if self.dr_rules is None else warmup_days_for(self.days[0], self.dr_rules)
        self.warmup = [self.days[0] - timedelta(days=warmup - k) for k in range(warmup)]
        self.event_days: set[date] = set()
        self.dr_events: list[DrEvent] = []
        self.prices = (
            prices if prices is not None else synthetic_series(self.days, self.rules, options.seed)
        )
        self.factor = factor or GridEmissionFactor(
            self.park.carbon.grid_emission_factor_kg_per_kwh, timezone=self.park.timezone
        )
        self.indicators = indicators
        self.progress = progress
        pairs = self.park.iter_assets()
        self.assets: list[AnyAsset] = [a for _, a in pairs]
        self.asset_ids = [a.id for a in self.assets]
        self.enterprise_of = [e.id for e, _ in pairs]
        # Batch loads and generators are started and stopped by the schedule (the control
        # loop leaves them alone, see vpp.limits); the loop drives everything else, PV caps
        # included.
        self.scheduled = [isinstance(a, ShiftableLoad | Generator) for a in self.assets]
        self.engine = self.park.engine
        solve_limit = options.solver_time_limit_s or self.engine.solver_time_limit_s
        gap = options.mip_gap if options.mip_gap is not None else self.engine.mip_gap
        self.solve_options = SolveOptions(time_limit_s=solve_limit, mip_gap=gap)
        # Following the awards is a re-plan under time pressure, as each bid scenario is.
        self.follow_options = SolveOptions(
            time_limit_s=min(solve_limit, options.scenario_time_limit_s), mip_gap=gap
        )
        self.bid_options = BidOptions(
            relative_offsets=options.bid_offsets or BidOptions().relative_offsets,
            include_bounds=options.bid_bounds,
            scenario_time_limit_s=options.scenario_time_limit_s,
        )
        self.rng = np.random.default_rng(options.seed)

    # --- entry point -------------------------------------------------------------------------

    def run(self) -> BacktestResult:
        started = time.perf_counter()
        days = asyncio.run(self._run())
        return self._result(days, time.perf_counter() - started)

    async def _run(self) -> list[_Day]:
        opts = self.options
        first = self._horizon((self.warmup or self.days)[0])
        period = opts.control_period_s
        clock = SteppedClock(first.start)
        self.clock = clock
        hold_s = max(2.5 * period, self.engine.setpoint_validity_s)
        settings = self.engine.model_copy(
            update={
                "control_period_s": period,
                "setpoint_validity_s": hold_s,
                "telemetry_stale_s": max(2.5 * period, self.engine.telemetry_stale_s),
            }
        )
        self.hold_s = hold_s
        metrics = Metrics()
        fleet = Fleet(self.park, clock, stale_after_s=settings.telemetry_stale_s, metrics=metrics)
        pairs = self.park.iter_assets()
        self.sim = SimAdapter(pairs, self.park, clock, seed=opts.seed, cloudiness=opts.cloudiness)
        # The same park left to local control: same seeds, hence the same weather and noise.
        self.local = SimAdapter(
            pairs, self.park, clock, seed=opts.seed, cloudiness=opts.cloudiness, name="local"
        )
        routes = {
            a: self.sim
            for a, fixed in zip(self.asset_ids, self.scheduled, strict=True)
            if not fixed
        }
        targets = TargetBook()
        controller = Controller(
            self.park, fleet, routes, clock, metrics, targets, settings, CONTROL_OPTIONS
        )
        self.fleet, self.targets, self.controller = fleet, targets, controller
        self.meter_start = first.start
        self.warmup_intervals = sum(self._horizon(d).intervals for d in self.warmup)
        total = self.warmup_intervals + sum(self._horizon(d).intervals for d in self.days)
        self.actual = _Meters(np.zeros((len(self.assets), total)))
        self.baseline = _Meters(np.zeros((len(self.assets), total)))
        self.generator_starts = np.zeros((len(self.assets), 0), dtype=np.int64)

        task = asyncio.create_task(controller.run(), name="backtest-controller")
        results: list[_Day] = []
        try:
            self._prime(first.start)
            await controller.wait_cycle(0)  # its first cycle, on the first readings
            await self._warm_up()
            for index, day in enumerate(self.days):
                results.append(await self._day(index, day))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.progress is not None:
            self.progress.update(len(self.days), "done")
            self.progress.close()
        return results

    def _horizon(self, day: date) -> Horizon:
        return local_day_horizon(day, self.rules.timezone, self.rules.interval)

    async def _warm_up(self) -> None:
        """Local control over the warm-up days: the meter history that forecasts and DR
        baselines need. Nothing is sent, so the park and its local-control twin stay equal;
        the loop sleeps through it (it has no target) and runs again on the first bid day."""
        if not self.warmup:
            return
        period_s = self.options.control_period_s
        period = timedelta(seconds=period_s)
        now = self.clock.now()
        readings = []
        for day in self.warmup:
            if self.progress is not None:
                self.progress.update(0, f"{day.isoformat()} warm-up (local control)")
            for _ in range(self._horizon(day).intervals):
                for _ in range(self.ticks_per_interval):
                    now += period
                    self.clock.set(now)
                    readings = self.sim.step_once(now, period_s)
                    self.local.step_once(now, period_s)
                self._close_interval()
        self.fleet.accept(self.sim.name, readings)
        done = self.controller.cycles_run
        self.clock.wake()
        await self.controller.wait_cycle(done)

    def _prime(self, start: datetime) -> None:
        """First readings at the start, as a simulator's first tick gives them."""
        period = self.options.control_period_s
        self.fleet.accept(self.sim.name, self.sim.step_once(start, period))
        self.local.step_once(start, period)
        self._energy_now = self._read(self.sim)
        self._local_now = self._read(self.local)
        self._starts_now = self._starts()

    def _read(self, adapter: SimAdapter) -> FloatArray:
        return np.array([adapter.models[a].energy_kwh for a in self.asset_ids])

    def _starts(self) -> FloatArray:
        return np.array(
            [
                m.starts if isinstance(m, GeneratorModel) else 0
                for m in (self.sim.models[a] for a in self.asset_ids)
            ],
            dtype=float,
        )

    def _say(self, index: int, share: float, label: str) -> None:
        if self.progress is not None:
            self.progress.update(index + share, f"{self.days[index].isoformat()} {label}")

    # --- one day -----------------------------------------------------------------------------

    async def _day(self, index: int, day: date) -> _Day:
        began = time.perf_counter()
        rules = self.rules
        horizon = local_day_horizon(day, rules.timezone, rules.interval)
        offset = self.actual.filled
        self._say(index, 0.0, "forecast and bids")
        submitted_at = rules.gate_closure.closes_at(day, rules.tz) - SUBMIT_BEFORE_GATE
        price = self.prices.on(horizon)
        forecast_price = forecast_prices(
            self.prices, horizon, self.options.price_forecast,
            self.options.price_noise_fraction, self.rng,
        )  # fmt: skip
        forecast = forecast_park(self.park, horizon, self._history(until=submitted_at))
        problem = build_problem(self.park, horizon, forecast_price, forecast)
        solve_began = time.perf_counter()
        samples = sample_bid_points(
            problem, rules, options=self.bid_options, solve_options=self.solve_options
        )
        bid_s = time.perf_counter() - solve_began
        curves = curves_from_samples(samples, rules, self.bid_options)
        planned = (
            samples.net_kw[samples.reference]
            if samples.reference is not None
            else _uncontrolled_kw(forecast)
        )
        fallback = ""
        if not curves:
            fallback = "no scenario solved: flat bids at the uncontrolled forecast"
        else:
            errors = spot_bid_errors(curves, rules, submitted_at)
            if errors:
                fallback = f"bids refused ({errors[0]}): flat bids at the plan"
        if fallback:
            log.warning("backtest %s: %s", day.isoformat(), fallback)
            curves = _flat_curves(horizon, planned, rules)

        market = MarketSimulator(rules, dict(zip(horizon.starts(), price.tolist(), strict=True)))
        cleared_at = submitted_at + CLEARING_DELAY
        awards = market.submit(
            Submission(rules.id, self.park.id, submitted_at, tuple(curves)), cleared_at
        )
        ordered = sorted(awards.awards, key=lambda a: a.interval.start)
        awarded = np.array([a.power_kw for a in ordered])
        dr_offers, events, dr_note = self._demand_response(day, horizon, problem, price, awarded)
        if dr_note:
            log.info("backtest %s: no DR: %s", day.isoformat(), dr_note)
        # During DR events the park must draw the award less the reduction called: the
        # schedule is asked for it, so that it starts what the loop cannot (generators).
        reduction = np.array(
            [sum(e.reduction_kw for e in events if e.active(t)) for t in horizon.starts()]
        )
        event_target = np.where(reduction != 0, awarded - reduction, np.nan)
        # The schedule behind the awards: its batch loads and generators are what the
        # schedule starts and stops; the control loop makes up the rest.
        solve_began = time.perf_counter()
        if self.options.follow is Follow.TARGET:
            follow = solve(problem.with_target(awarded - reduction), self.follow_options)
        elif self.options.follow is Follow.CLEARED and any(len(c.steps) > 1 for c in curves):
            cleared = problem.with_prices(price)
            follow = solve(cleared.with_target(event_target) if events else cleared,
                           self.solve_options)  # fmt: skip
        else:  # flat bids were awarded the plan itself
            follow = solve(problem.with_target(event_target) if events else problem,
                           self.solve_options)  # fmt: skip
        schedule = follow.schedule
        follow_status = follow.status.value
        if schedule is None:
            # Nothing in time: run the plan at the forecast prices.
            plan = solve(problem, self.solve_options)
            schedule = plan.schedule
            follow_status += f", plan {plan.status.value}"
        follow_s = time.perf_counter() - solve_began
        self.targets.prune(horizon.start)
        self.targets.set_schedule(horizon.start, horizon.interval, awarded.tolist())
        for award in ordered:
            self.targets.add_award(award, cleared_at)
        for event in events:
            self.targets.add_event(event)
        if self.options.asset_plans and schedule is not None:
            plans = self._plans(schedule, forecast)
            self.controller.set_plan(horizon.start, horizon.interval, plans)

        control_began = time.perf_counter()
        cycles = await self._control(index, horizon, self._commands(schedule))
        control_s = time.perf_counter() - control_began

        self._say(index, 0.9, "perfect foresight")
        solve_began = time.perf_counter()
        optimum = self._optimum(horizon, price, forecast, offset)
        optimum_s = time.perf_counter() - solve_began
        result = _Day(horizon, price, forecast_price, list(curves), planned, awarded,
                      schedule, forecast)  # fmt: skip
        result.result = {
            "optimum_kw": optimum[0],
            "optimum_status": optimum[1],
            "optimum_power": optimum[2],
            "day": DayResult(
                day=day,
                bid_solves=samples.solves,
                failed_scenarios=len(samples.failed),
                bid_fallback=fallback,
                price_responsive_curves=sum(len(c.steps) > 1 for c in curves),
                follow_status=follow_status,
                optimum_status=optimum[1],
                dr_offers=dr_offers,
                dr_events=len(events),
                dr_note=dr_note,
                wall_s=time.perf_counter() - began,
                bid_s=bid_s,
                follow_s=follow_s,
                optimum_s=optimum_s,
                control_s=control_s,
                control_cycles=cycles,
            ),
        }
        return result

    # --- demand response ---------------------------------------------------------------------

    def _demand_response(
        self,
        day: date,
        horizon: Horizon,
        problem: DispatchProblem,
        price: FloatArray,
        awarded_kw: FloatArray,
    ) -> tuple[int, list[DrEvent], str]:
        """Offer the day's DR capacity, let the simulated grid call it; returns the number of
        intervals offered, the events called and, when nothing was offered, why.

        The DR gate closes after the spot market has cleared: the park offers only the
        reduction its spot award leaves it, so that it can deliver both.
        """
        dr = self.dr_rules
        if dr is None:
            return 0, [], ""
        gap = self._baseline_gap(day, dr)
        if gap:
            return 0, [], gap
        submitted_at = dr.gate_closure.closes_at(day, dr.tz) - SUBMIT_BEFORE_GATE
        envelope = build_envelope(problem, notice_of(self.park))
        offers = spare_dr_offers(build_dr_offers(envelope, dr), envelope, awarded_kw, dr)
        if not offers:
            return 0, [], "no capacity left beside the spot award"
        errors = dr_offer_errors(offers, dr, submitted_at)
        if errors:
            return 0, [], f"offers refused ({errors[0]})"
        prices = dict(zip(horizon.starts(), price.tolist(), strict=True))
        trigger = float(np.quantile(price, self.options.dr_trigger_quantile))
        # The grid pays its DR product's price: every offer at or below the cap is taken.
        calls = dr_calls_from_prices(
            prices, dr, trigger, call_price_per_mwh=dr.bid_price_cap_per_mwh
        )
        cleared_at = submitted_at + CLEARING_DELAY
        market = MarketSimulator(self.rules, prices, dr, calls)
        result = market.submit(
            Submission(dr.id, self.park.id, submitted_at, dr_offers=tuple(offers)), cleared_at
        )
        # An event is known once the offers are cleared, however long its invitation's notice.
        events = [
            dataclasses.replace(e, notified_at=max(e.notified_at, cleared_at))
            for e in result.dr_events
        ]
        self.dr_events.extend(events)
        self.event_days.update(e.start.astimezone(dr.tz).date() for e in events)
        return len(offers), events, ""

    def _baseline_gap(self, day: date, dr: DemandResponseRules) -> str:
        """Why the product's baseline cannot be built for an event on `day` from the meter
        history it will have (every earlier day is metered by then); "" when it can."""
        metered = {*self.warmup, *(d for d in self.days if d < day)}
        working = dr.calendar.is_working_day(day)
        method = dr.baseline
        eligible = sum(
            1
            for back in range(1, method.max_lookback_days + 1)
            if (d := day - timedelta(days=back)) in metered
            and d not in self.event_days
            and dr.calendar.is_working_day(d) == working
        )
        if eligible >= method.required_days:
            return ""
        kind = "working" if working else "non-working"
        return (
            f"the {method.method} baseline needs {method.required_days} {kind} days of meter "
            f"history, {eligible} metered"
        )

    def _enterprise_history(self) -> dict[str, pd.Series[float]]:
        """Metered mean power of each enterprise per interval over every metered interval."""
        filled = self.actual.filled
        step = self.rules.interval
        index = pd.DatetimeIndex([self.meter_start + step * k for k in range(filled)])
        power = self.actual.kwh[:, :filled] / (step / timedelta(hours=1))
        rows = np.array(self.enterprise_of)
        return {
            e.id: pd.Series(power[rows == e.id].sum(axis=0), index=index, dtype=float)
            for e in self.park.enterprises
        }

    def _settle_dr(self) -> list[EventSettlement]:
        """Every DR event settled against the product's baseline from the meter history."""
        dr = self.dr_rules
        if dr is None or not self.dr_events:
            return []
        history = self._enterprise_history()
        settled = []
        for event in sorted(self.dr_events, key=lambda e: e.start):
            try:
                # Event days never count as baseline days (the event day itself is not looked at).
                baselines = compute_baselines(
                    history, event.start, event.end, dr, excluded_days=self.event_days
                )
                settled.append(settle_event(event, dr, baselines, history))
            except (BaselineError, SettlementError) as err:
                raise BacktestError(f"DR event {event.event_id}: {err}") from err
        return settled

    def _history(self, until: datetime) -> dict[str, pd.Series[float]]:
        """Metered mean power per asset and interval, for intervals that ended by `until`."""
        filled = self.actual.filled
        if filled == 0:
            return {}
        step = self.rules.interval
        starts = pd.DatetimeIndex([self.meter_start + step * k for k in range(filled)])
        keep = np.asarray(starts + pd.Timedelta(step) <= pd.Timestamp(until))
        if not keep.any():
            return {}
        power = self.actual.kwh[:, :filled][:, keep] / (step / timedelta(hours=1))
        return {
            a: pd.Series(power[i], index=starts[keep], dtype=float)
            for i, a in enumerate(self.asset_ids)
        }

    def _plans(self, schedule: Schedule, forecast: ParkForecast) -> dict[str, list[float]]:
        """The schedule's power of the storage-like assets the loop drives (what they keep in
        store for later, battery energy, cold, EV charge, follows the plan), and of PV where
        the schedule curtails it below its forecast (NaN elsewhere: the loop decides)."""
        plans: dict[str, list[float]] = {}
        for asset in self.assets:
            if asset.id not in schedule.asset_ids:
                continue
            power = np.asarray(schedule.power_of(asset.id), dtype=float)
            if isinstance(asset, PvAsset):
                available = np.asarray(forecast.assets[asset.id].power_kw, dtype=float)
                curtailed = power > available + np.maximum(1.0, 0.01 * np.abs(available))
                plans[asset.id] = np.where(curtailed, power, np.nan).tolist()
            elif isinstance(asset, PLANNED_KINDS):
                plans[asset.id] = power.tolist()
        return plans

    def _commands(self, schedule: Schedule | None) -> dict[str, FloatArray]:
        """The schedule's command per interval to each batch load and generator."""
        if schedule is None:
            return {}
        return {
            asset.id: np.asarray(schedule.power_of(asset.id), dtype=float)
            for asset, fixed in zip(self.assets, self.scheduled, strict=True)
            if fixed and asset.id in schedule.asset_ids
        }

    async def _control(self, index: int, horizon: Horizon, plan: Mapping[str, FloatArray]) -> int:
        """Run the day on the simulated assets: per control period, the schedule's commands,
        physics over the period, its telemetry, the controller's cycle and its sends."""
        period = timedelta(seconds=self.options.control_period_s)
        period_s = self.options.control_period_s
        controller = self.controller
        cycles = 0
        now = self.clock.now()
        for k in range(horizon.intervals):
            if k % 8 == 0:
                self._say(index, 0.05 + 0.85 * k / horizon.intervals, "control")
            for _ in range(self.ticks_per_interval):
                await self._send_schedule(plan, k, now)
                now += period
                done = controller.cycles_run
                self.clock.set(now)
                self.fleet.accept(self.sim.name, self.sim.step_once(now, period_s))
                self.local.step_once(now, period_s)
                self.clock.wake()
                await controller.wait_cycle(done)
                await controller.wait_idle()
                cycles += 1
            self._close_interval()
        return cycles

    async def _send_schedule(self, plan: Mapping[str, FloatArray], k: int, now: datetime) -> None:
        """The schedule's command to each asset it drives, for the period from `now`."""
        until = now + timedelta(seconds=self.hold_s)
        for asset_id, power in plan.items():
            if math.isnan(power[k]):
                continue
            setpoint = Setpoint(asset_id, float(power[k]), now, until, f"schedule-{asset_id}-{k}")
            await self.sim.send(setpoint)

    def _close_interval(self) -> None:
        energy = self._read(self.sim)
        local = self._read(self.local)
        k = self.actual.filled
        self.actual.kwh[:, k] = energy - self._energy_now
        self.baseline.kwh[:, k] = local - self._local_now
        self.actual.filled = self.baseline.filled = k + 1
        self._energy_now, self._local_now = energy, local

    def _optimum(
        self, horizon: Horizon, price: FloatArray, forecast: ParkForecast, offset: int
    ) -> tuple[FloatArray, str, FloatArray]:
        """The day solved with the actual prices and the loads as realised under local control.

        Returns net park power, status and per-asset power (rows in `asset_ids` order). If the
        solve fails the delivered power stands in, so the day neither adds to nor takes from
        the capture ratio (and the status says so).
        """
        t = horizon.intervals
        realised = self.baseline.kwh[:, offset : offset + t] / horizon.hours
        assets: dict[str, AssetForecast] = {}
        for i, asset in enumerate(self.assets):
            if isinstance(asset, PvAsset | CurtailableLoad | ThermalLoad):
                assets[asset.id] = AssetForecast(asset.id, realised[i].copy())
            else:
                assets[asset.id] = forecast.assets[asset.id]
        truth = ParkForecast(horizon, assets, forecast.ev_sessions, forecast.ambient_c)
        problem = build_problem(self.park, horizon, price, truth)
        result = solve(problem, self.solve_options)
        if result.schedule is None:
            delivered = self.actual.kwh[:, offset : offset + t] / horizon.hours
            return delivered.sum(axis=0), f"{result.status.value} (delivered used)", delivered
        rows = _rows(problem, result.schedule, self.asset_ids)
        return net_park_kw(problem, result.schedule), result.status.value, rows

    # --- settlement and summary --------------------------------------------------------------

    def _result(self, days: list[_Day], wall_s: float) -> BacktestResult:
        rules = self.rules
        first = days[0].horizon
        skip = self.warmup_intervals  # the warm-up is history, not part of the result
        total = self.actual.filled - skip
        hours = first.hours
        full = Horizon(first.start, first.interval, total)
        actual_kw = self.actual.kwh[:, skip:] / hours
        baseline_kw = self.baseline.kwh[:, skip:] / hours
        optimum_kw_assets = np.hstack([d.result["optimum_power"] for d in days])
        price = np.concatenate([d.price for d in days])
        forecast_price = np.concatenate([d.forecast_price for d in days])
        awarded = np.concatenate([d.awarded_kw for d in days])
        planned = np.concatenate([d.planned_kw for d in days])
        curves = [c for d in days for c in d.curves]
        delivered = actual_kw.sum(axis=0)
        base = baseline_kw.sum(axis=0)
        optimum = np.concatenate([d.result["optimum_kw"] for d in days])
        to_money = hours / 1000 * price
        revenue = (base - delivered) * to_money
        optimum_revenue = (base - optimum) * to_money
        # A called DR reduction is not a deviation from the spot position: it is settled by
        # the DR product, against its own baseline.
        reduction = self._dr_reduction_kw(full)
        target = awarded - reduction
        deviation_kwh = np.abs(delivered - target) * hours
        band_kwh = (1 - rules.settlement.penalty_floor_ratio) * np.abs(target) * hours
        penalised_kwh = np.maximum(deviation_kwh - band_kwh, 0.0)
        penalty = penalised_kwh / 1000 * np.abs(price) * rules.settlement.penalty_price_multiple
        within = np.abs(delivered - target) <= np.maximum(
            WITHIN_SHARE * np.abs(target), WITHIN_FLOOR_KW
        )
        settlements = self._settle_dr()
        dr_revenue = float(sum(s.payment for s in settlements))
        dr_penalties = float(sum(s.penalty for s in settlements))

        starts_now = self._starts()
        cost_assets = operating_cost(
            self.assets, actual_kw, baseline_kw, hours, starts=starts_now.astype(int).tolist()
        )
        optimum_cost_assets = np.zeros(len(self.assets))
        t0 = 0
        for d in days:  # the plans are per day: start-ups are counted within each day
            rows = d.result["optimum_power"]
            optimum_cost_assets += operating_cost(
                self.assets, rows, baseline_kw[:, t0 : t0 + rows.shape[1]], hours
            )
            t0 += rows.shape[1]

        intervals = tuple(
            IntervalResult(
                start=(full.start + full.interval * k).astimezone(rules.tz),
                price_per_mwh=float(price[k]),
                forecast_price_per_mwh=float(forecast_price[k]),
                bid_min_kw=float(curves[k].steps[-1].power_kw),
                bid_max_kw=float(curves[k].steps[0].power_kw),
                planned_kw=float(planned[k]),
                awarded_kw=float(awarded[k]),
                dr_reduction_kw=float(reduction[k]),
                target_kw=float(target[k]),
                delivered_kw=float(delivered[k]),
                baseline_kw=float(base[k]),
                optimum_kw=float(optimum[k]),
                revenue=float(revenue[k]),
                optimum_revenue=float(optimum_revenue[k]),
                penalty=float(penalty[k]),
                penalised_kwh=float(penalised_kwh[k]),
                within_5pct=bool(within[k]),
            )
            for k in range(total)
        )
        enterprises: list[EnterpriseResult] = []
        for enterprise in self.park.enterprises:
            rows = [i for i, e in enumerate(self.enterprise_of) if e == enterprise.id]
            e_delivered = actual_kw[rows].sum(axis=0)
            e_base = baseline_kw[rows].sum(axis=0)
            e_opt = optimum_kw_assets[rows].sum(axis=0)
            enterprises.append(
                EnterpriseResult(
                    enterprise_id=enterprise.id,
                    revenue=float(((e_base - e_delivered) * to_money).sum()),
                    cost=float(cost_assets[rows].sum()),
                    optimum_revenue=float(((e_base - e_opt) * to_money).sum()),
                    energy_kwh=float(e_delivered.sum() * hours),
                    baseline_energy_kwh=float(e_base.sum() * hours),
                    dr_revenue=float(sum(s.enterprise(enterprise.id).payment for s in settlements)),
                    dr_penalties=float(
                        sum(s.enterprise(enterprise.id).penalty for s in settlements)
                    ),
                )
            )

        total_revenue = float(revenue.sum())
        total_optimum = float(optimum_revenue.sum())
        total_cost = float(cost_assets.sum())
        total_penalty = float(penalty.sum())
        optimum_cost = float(optimum_cost_assets.sum())
        mean_target = float(np.mean(np.abs(target)))
        tracking = (
            1 - float(np.mean(np.abs(delivered - target))) / mean_target if mean_target > 0 else 0.0
        )
        carbon = emissions_t(
            self.park, full, self.asset_ids, actual_kw, self.factor, self.indicators
        )
        carbon_base = emissions_t(
            self.park, full, self.asset_ids, baseline_kw, self.factor, self.indicators
        )
        day_results: list[DayResult] = [d.result["day"] for d in days]
        opts = self.options
        summary: dict[str, Any] = {
            "park": self.park.id,
            "market": rules.id,
            "currency": rules.currency,
            "first_day": self.days[0].isoformat(),
            "days": len(self.days),
            "intervals": total,
            "prices": self.prices.source or "prices",
            "price_forecast": opts.price_forecast.value,
            "price_noise_fraction": opts.price_noise_fraction,
            "seed": opts.seed,
            "control_period_s": opts.control_period_s,
            "revenue": total_revenue,
            "cost": total_cost,
            "penalties": total_penalty,
            "net_revenue": total_revenue - total_cost - total_penalty,
            "optimum_revenue": total_optimum,
            "optimum_cost": optimum_cost,
            "optimum_net_revenue": total_optimum - optimum_cost,
            "capture_ratio": total_revenue / total_optimum if total_optimum != 0 else None,
            "net_capture_ratio": (
                (total_revenue - total_cost - total_penalty) / (total_optimum - optimum_cost)
                if total_optimum - optimum_cost != 0
                else None
            ),
            "tracking_score": tracking,
            "within_5pct_share": float(np.mean(within)),
            "mean_abs_deviation_kw": float(np.mean(np.abs(delivered - target))),
            "mean_abs_award_kw": float(np.mean(np.abs(awarded))),
            "mean_abs_target_kw": mean_target,
            "penalised_kwh": float(penalised_kwh.sum()),
            "energy_cost": float((delivered * to_money).sum()),
            "baseline_energy_cost": float((base * to_money).sum()),
            "energy_kwh": float(delivered.sum() * hours),
            "baseline_energy_kwh": float(base.sum() * hours),
            "carbon_t": carbon,
            "baseline_carbon_t": carbon_base,
            "carbon_method": "vpp.carbon.account"
            if self.indicators is not None
            else "grid import and generator fuel",
            "price_responsive_curves": sum(d.price_responsive_curves for d in day_results),
            "bid_fallback_days": [d.day.isoformat() for d in day_results if d.bid_fallback],
            "optimum_unsolved_days": [
                d.day.isoformat() for d in day_results if "delivered used" in d.optimum_status
            ],
            "dr_product": self.dr_rules.id if self.dr_rules is not None else None,
            "warmup_days": len(self.warmup),
            "dr_revenue": dr_revenue,
            "dr_penalties": dr_penalties,
            "dr_events": [_event_summary(s, self.dr_events) for s in settlements],
            "dr_skipped_days": {d.day.isoformat(): d.dr_note for d in day_results if d.dr_note},
            "total_net_revenue": total_revenue
            - total_cost
            - total_penalty
            + dr_revenue
            - dr_penalties,
            "enterprises": {
                e.enterprise_id: {
                    "revenue": e.revenue,
                    "cost": e.cost,
                    "optimum_revenue": e.optimum_revenue,
                    "energy_kwh": e.energy_kwh,
                    "baseline_energy_kwh": e.baseline_energy_kwh,
                    "dr_revenue": e.dr_revenue,
                    "dr_penalties": e.dr_penalties,
                }
                for e in enterprises
            },
            "per_day": [{**asdict(d), "day": d.day.isoformat()} for d in day_results],
            "controller": {
                "setpoints_sent": self.controller.sent,
                "setpoints_refused": self.controller.refused,
                "setpoints_expired": self.controller.expired,
                "setpoints_clamped": self.controller.clamped,
            },
            "wall_s": wall_s,
        }
        return BacktestResult(
            summary=summary,
            intervals=intervals,
            days=tuple(day_results),
            enterprises=tuple(enterprises),
            bid_curves=tuple(curves),
            dr_settlements=tuple(settlements),
        )

    def _dr_reduction_kw(self, horizon: Horizon) -> FloatArray:
        """The reduction called by the DR events in force over each interval."""
        starts = horizon.starts()
        return np.array(
            [sum(e.reduction_kw for e in self.dr_events if e.active(t)) for t in starts],
            dtype=float,
        )


def _event_summary(settled: EventSettlement, events: Sequence[DrEvent]) -> dict[str, Any]:
    """One settled DR event as `summary.json` lists it."""
    event = next(e for e in events if e.event_id == settled.event_id)
    park = settled.park
    return {
        "event_id": settled.event_id,
        "start": settled.start,
        "end": settled.end,
        "invitation": settled.invitation,
        "notified_at": event.notified_at,
        "reduction_kw": event.reduction_kw,
        "price_per_mwh": event.price_per_mwh,
        "target_kwh": park.target_kwh,
        "delivered_kwh": park.delivered_kwh,
        "performance_ratio": park.performance_ratio,
        "credited_kwh": park.credited_kwh,
        "payment": park.payment,
        "penalty": park.penalty,
        "enterprises": {
            e.site: {
                "target_kwh": e.target_kwh,
                "delivered_kwh": e.delivered_kwh,
                "payment": e.payment,
                "penalty": e.penalty,
            }
            for e in settled.enterprises
        },
    }


def _rows(problem: DispatchProblem, schedule: Schedule, asset_ids: Sequence[str]) -> FloatArray:
    """Per-asset power of a schedule in `asset_ids` order (zeros for assets it lacks)."""
    rows = np.zeros((len(asset_ids), problem.intervals))
    known = set(schedule.asset_ids)
    for i, asset_id in enumerate(asset_ids):
        if asset_id in known:
            rows[i] = schedule.power_of(asset_id)
    return rows


def _uncontrolled_kw(forecast: ParkForecast) -> FloatArray:
    parts = [np.asarray(f.power_kw, dtype=float) for f in forecast.assets.values()]
    return np.sum(parts, axis=0) if parts else np.zeros(forecast.horizon.intervals)


def _flat_curves(horizon: Horizon, power_kw: FloatArray, rules: SpotMarketRules) -> list[BidCurve]:
    """One-step curves: a fixed schedule, which every spot rule set takes as a price-taker."""
    return [
        BidCurve(
            Interval(start, horizon.interval),
            (BidStep(rules.price_cap_per_mwh, round(float(power_kw[k]), 1)),),
        )
        for k, start in enumerate(horizon.starts())
    ]


# --- outputs ------------------------------------------------------------------------------------


def write_outputs(result: BacktestResult, out: Path) -> list[Path]:
    """summary.json, intervals.csv and the plots into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.json", out / "intervals.csv"]
    files[0].write_text(
        json.dumps(result.summary, indent=2, default=_json) + "\n", encoding="utf-8"
    )
    with files[1].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        names = list(IntervalResult.__dataclass_fields__)
        writer.writerow(names)
        for row in result.intervals:
            values = [getattr(row, name) for name in names]
            writer.writerow([v.isoformat() if isinstance(v, datetime) else v for v in values])
    files += _plots(result, out)
    return files


def _json(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _plots(result: BacktestResult, out: Path) -> list[Path]:
    import matplotlib  # noqa: PLC0415 - plotting is only needed when outputs are written

    matplotlib.use("Agg")  # never open a window: backtests run on servers and in CI
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result.intervals
    # Market time on the axes (the rows already carry the market's zone).
    times = np.array([r.start.replace(tzinfo=None) for r in rows], dtype="datetime64[s]")
    zone = rows[0].start.tzname() if rows else ""
    currency = result.summary["currency"]
    paths: list[Path] = []

    def finish(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.step(times, [r.awarded_kw / 1000 for r in rows], where="post", label="awarded", lw=1.4)
    if any(r.dr_reduction_kw for r in rows):
        ax.step(times, [r.target_kw / 1000 for r in rows], where="post", lw=1.0, ls=":",
                label="target (award less DR)")  # fmt: skip
    ax.step(times, [r.delivered_kw / 1000 for r in rows], where="post", label="delivered", lw=1.0)
    ax.step(times, [r.baseline_kw / 1000 for r in rows], where="post", label="local control",
            lw=0.8, alpha=0.7)  # fmt: skip
    ax.step(times, [r.optimum_kw / 1000 for r in rows], where="post", label="perfect foresight",
            lw=0.8, ls="--")  # fmt: skip
    ax.set_ylabel("park power, MW (+ drawn)")
    ax.set_title(
        f"Schedule vs delivered — tracking {result.summary['tracking_score']:.3f}, "
        f"within ±5 %: {100 * result.summary['within_5pct_share']:.1f} % of intervals"
    )
    ax.set_xlabel(f"market time ({zone})")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    finish(fig, "schedule_vs_delivered.png")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    top.step(times, [r.price_per_mwh for r in rows], where="post", label="clearing price")
    top.step(times, [r.forecast_price_per_mwh for r in rows], where="post", lw=0.8,
             label="forecast price")  # fmt: skip
    top.set_ylabel(f"{currency}/MWh")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.fill_between(times, [r.bid_min_kw / 1000 for r in rows],
                        [r.bid_max_kw / 1000 for r in rows], step="post", alpha=0.3,
                        label="bid range (cap … floor)")  # fmt: skip
    bottom.step(times, [r.awarded_kw / 1000 for r in rows], where="post", label="awarded")
    bottom.set_ylabel("MW (+ drawn)")
    bottom.set_xlabel(f"market time ({zone})")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    top.set_title("Bids vs prices")
    finish(fig, "bids_vs_prices.png")

    enterprises = result.enterprises
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(enterprises) + 3), 4.5))
    x = np.arange(len(enterprises))
    ax.bar(x - 0.27, [e.revenue for e in enterprises], 0.27, label="revenue")
    ax.bar(x, [e.optimum_revenue for e in enterprises], 0.27, label="perfect foresight")
    ax.bar(x + 0.27, [-e.cost for e in enterprises], 0.27, label="operating cost (−)")
    ax.set_xticks(x, [e.enterprise_id for e in enterprises], rotation=30, ha="right")
    ax.set_ylabel(currency)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title("Revenue per enterprise (vs local control)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    finish(fig, "revenue_per_enterprise.png")
    return paths


def run_backtest(
    loaded: LoadedConfig,
    options: BacktestOptions,
    prices: PriceSeries | None = None,
    *,
    factor: GridEmissionFactor | None = None,
    indicators: IndicatorConfig | None = None,
    progress: Progress | None = None,
) -> BacktestResult:
    """Run a backtest (see `Backtest`)."""
    return Backtest(
        loaded, options, prices, factor=factor, indicators=indicators, progress=progress
    ).run()
