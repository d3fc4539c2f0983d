"""Day-ahead planning in the running engine: forecast → schedule → envelope → bids → market.

`plan_day` is pure and synchronous (the engine runs it with `asyncio.to_thread`); `Planner`
applies a plan to the target book, the API's read model and the store, submits the bids to
the market (the simulated one when the engine runs without a market connection), and plans
again for the next delivery day before its gate closes and whenever the API asks for a replan.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from dispatch.bids import BidOptions, build_bid_curves, build_dr_offers, spare_dr_offers
from dispatch.fanout import FanOutError
from dispatch.flexibility import ParkEnvelope, build_envelope, notice_of
from dispatch.forecast import forecast_park
from dispatch.problem import BuildOptions, build_problem
from dispatch.series import FloatArray, Horizon
from dispatch.solve import Result, SolveOptions, solve
from market.formats import AwardSet, Submission, submission_to_json
from market.prices import PriceSeries, synthetic_prices
from market.simulator import MarketSimulator, dr_calls_from_prices
from vpp.clock import Clock
from vpp.config import LoadedConfig
from vpp.domain import AssetState, Award, BidCurve, DrOffer
from vpp.errors import VPPError
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.state import EngineState, StateError
from vpp.store import Store, StoredSchedule
from vpp.targets import TargetBook

log = logging.getLogger(__name__)

RETRY_AFTER_FAILED_PLAN_S = 15 * 60.0
DR_TRIGGER_QUANTILE = 0.9  # the simulated grid calls DR at its highest-price tenth of the day


@dataclass(frozen=True, slots=True)
class DayPlan:
    """Everything planned for one horizon, with the wall time of each step."""

    horizon: Horizon
    prices_per_mwh: FloatArray
    result: Result
    envelope: ParkEnvelope
    bid_curves: tuple[BidCurve, ...]
    dr_offers: tuple[DrOffer, ...]
    timings_s: Mapping[str, float] = field(default_factory=dict)


def day_horizon(day: date, loaded: LoadedConfig) -> Horizon:
    """The delivery day's market intervals in the park's time zone (92–100 on DST days)."""
    tz = loaded.park.tz
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    interval = timedelta(minutes=loaded.spot.interval_min)
    return Horizon(start, interval, int((end - start) // interval))


def plan_day(
    loaded: LoadedConfig,
    horizon: Horizon,
    prices_per_mwh: FloatArray,
    *,
    states: Mapping[str, AssetState] | None = None,
    now: datetime | None = None,
    carbon_price_per_t: float = 0.0,
    with_bids: bool = True,
    bid_options: BidOptions | None = None,
    local_dispatch: bool = False,
) -> DayPlan:
    """Forecast, schedule, envelope, bid curves and DR offers for one horizon (pure)."""
    park = loaded.park
    timings: dict[str, float] = {}
    started = time.perf_counter()
    forecast = forecast_park(park, horizon)
    timings["forecast_s"] = time.perf_counter() - started
    step = time.perf_counter()
    options = BuildOptions(now=now, carbon_price_per_t=carbon_price_per_t)
    problem = build_problem(park, horizon, prices_per_mwh, forecast, states, options)
    solve_options = SolveOptions.from_engine(park.engine)
    if local_dispatch:  # on this process's threads, whatever engine.dispatch_scheduler says
        solve_options = replace(solve_options, dask_scheduler=None)
    result = solve(problem, solve_options)
    timings["schedule_s"] = time.perf_counter() - step
    step = time.perf_counter()
    envelope = build_envelope(problem, notice_of(park))
    timings["envelope_s"] = time.perf_counter() - step
    curves: tuple[BidCurve, ...] = ()
    offers: tuple[DrOffer, ...] = ()
    if with_bids:
        step = time.perf_counter()
        curves = tuple(
            build_bid_curves(problem, loaded.spot, options=bid_options, solve_options=solve_options)
        )
        if loaded.dr is not None:
            offers = tuple(build_dr_offers(envelope, loaded.dr))
        timings["bids_s"] = time.perf_counter() - step
    timings["total_s"] = time.perf_counter() - started
    return DayPlan(
        horizon,
        np.asarray(prices_per_mwh, dtype=np.float64),
        result,
        envelope,
        curves,
        offers,
        timings,
    )


class PriceSource:
    """Forecast (and, in simulation, clearing) prices: a price file or a seeded synthetic series."""

    def __init__(self, series: PriceSeries | None = None, seed: int = 0) -> None:
        self.series = series
        self.seed = seed

    def on(self, horizon: Horizon) -> FloatArray:
        if self.series is not None:
            return self.series.on(horizon)
        day_seed = self.seed + horizon.start.toordinal()
        return synthetic_prices(horizon, seed=day_seed)


class Planner:
    """Keeps the park planned: today's plan at start, the next day's before its gate closes."""

    def __init__(
        self,
        loaded: LoadedConfig,
        clock: Clock,
        fleet: Fleet,
        targets: TargetBook,
        state: EngineState,
        metrics: Metrics,
        prices: PriceSource,
        *,
        store: Store | None = None,
        market: Callable[[Submission], AwardSet] | None = None,
        replan_requests: Callable[[], Awaitable[tuple[str, str, float | None]]] | None = None,
        bid_options: BidOptions | None = None,
        report: Callable[[str], None] | None = None,
        lead_before_gate: timedelta = timedelta(minutes=30),
    ) -> None:
        self.loaded = loaded
        self.clock = clock
        self.fleet = fleet
        self.targets = targets
        self.state = state
        self.metrics = metrics
        self.prices = prices
        self.store = store
        self.market = market if market is not None else self.simulated_market
        self.replan_requests = replan_requests
        self.bid_options = bid_options
        self.report = report or (lambda line: None)
        self.lead_before_gate = lead_before_gate
        self.planned_days: set[date] = set()
        self.last_plan: DayPlan | None = None

    # --- the loop --------------------------------------------------------------------------

    async def run(self, plan_today: bool = True, day_ahead: bool = True) -> None:
        """Plan today (unless already done), then each next day ahead of its gate closure."""
        today = self.clock.now().astimezone(self.loaded.park.tz).date()
        if plan_today and today not in self.planned_days:
            await self.plan_and_commit(today, day_ahead=True)
        async with asyncio.TaskGroup() as group:
            if day_ahead:
                group.create_task(self._day_ahead_loop(), name="planner:day-ahead")
            if self.replan_requests is not None:
                group.create_task(self._replan_loop(), name="planner:replan")

    async def _day_ahead_loop(self) -> None:
        tz = self.loaded.park.tz
        while True:
            today = self.clock.now().astimezone(tz).date()
            tomorrow = today + timedelta(days=1)
            if tomorrow in self.planned_days:
                midnight = datetime.combine(tomorrow, datetime.min.time(), tzinfo=tz)
                await self.clock.sleep(max((midnight - self.clock.now()).total_seconds(), 1.0))
                continue
            closes = self.loaded.spot.gate_closure.closes_at(tomorrow, tz)
            wake = closes - self.lead_before_gate - timedelta(hours=1)
            wait_s = (wake - self.clock.now()).total_seconds()
            if wait_s > 0:
                await self.clock.sleep(wait_s)
                continue
            plan = await self.plan_and_commit(tomorrow, day_ahead=True)
            if plan is None or not plan.result.ok:
                # do not spin on a day that cannot be planned: try again later, before the gate
                await self.clock.sleep(RETRY_AFTER_FAILED_PLAN_S)

    async def _replan_loop(self) -> None:
        assert self.replan_requests is not None
        while True:
            ticket, reason, carbon_price = await self.replan_requests()
            self.report(f"replan {ticket} requested: {reason}")
            today = self.clock.now().astimezone(self.loaded.park.tz).date()
            await self.plan_and_commit(
                today, day_ahead=False, carbon_price_per_t=carbon_price or 0.0
            )

    # --- one plan --------------------------------------------------------------------------

    async def plan_and_commit(
        self, day: date, *, day_ahead: bool, carbon_price_per_t: float = 0.0
    ) -> DayPlan | None:
        """Plan `day`; a day-ahead plan is also bid into the market and its awards committed.

        A replan (not day-ahead) re-schedules the rest of the day from the fleet's state and
        keeps the awards already committed.
        """
        horizon = day_horizon(day, self.loaded)
        now = self.clock.now()
        try:
            prices = self.prices.on(horizon)
        except VPPError as err:
            log.error("cannot plan %s: %s", day, err)
            self.metrics.fallback_schedules.labels("no_prices").inc()
            return None
        states = None if day_ahead else {s.asset_id: s for s in self.fleet.states()}
        started = time.perf_counter()
        plan_now = functools.partial(
            plan_day,
            self.loaded,
            horizon,
            prices,
            states=states,
            now=None if day_ahead else now,
            carbon_price_per_t=carbon_price_per_t,
            with_bids=day_ahead,
            bid_options=self.bid_options,
        )
        try:
            plan = await asyncio.to_thread(plan_now)
        except FanOutError as err:  # engine.dispatch_scheduler unreachable or lost a worker
            # The plan is still needed: the parts are solved on this process's threads.
            log.error("planning %s on the engine's own threads: %s", day, err)
            self.metrics.fallback_schedules.labels("dispatch_cluster").inc()
            plan = await asyncio.to_thread(plan_now, local_dispatch=True)
        self.metrics.solve_duration.labels("day_ahead" if day_ahead else "replan").observe(
            time.perf_counter() - started
        )
        self.commit(plan, day, day_ahead=day_ahead, now=now, carbon_price_per_t=carbon_price_per_t)
        return plan

    def commit(
        self,
        plan: DayPlan,
        day: date,
        *,
        day_ahead: bool,
        now: datetime | None = None,
        carbon_price_per_t: float = 0.0,
    ) -> None:
        """Apply a plan: publish it, set the schedule baseline, and bid a day-ahead plan."""
        now = now if now is not None else self.clock.now()
        horizon = plan.horizon
        kind = "day_ahead" if day_ahead else "replan"
        self.metrics.solves.labels(kind, plan.result.status.value).inc()
        self.last_plan = plan
        self._publish_plan(plan, now, carbon_price_per_t)
        if not plan.result.ok or plan.result.schedule is None:
            reason = plan.result.status.value
            self.metrics.fallback_schedules.labels(reason).inc()
            log.error(
                "plan for %s is %s: %s; assets stay on local control",
                day,
                reason,
                plan.result.diagnosis,
            )
            self.report(f"plan for {day}: {reason} — no schedule, assets stay on local control")
            return
        schedule = plan.result.schedule
        first = 0 if day_ahead else max(horizon.index_of(now) + 1, 0)
        if first < horizon.intervals:
            self.targets.set_schedule(
                horizon.start + horizon.interval * first,
                horizon.interval,
                [float(v) for v in schedule.park_kw[first:]],
            )
        if day_ahead:
            self._submit(plan, day)
            self.planned_days.add(day)
        timing = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in plan.timings_s.items())
        self.report(
            f"plan for {day} ({'day-ahead' if day_ahead else 'replan'}): {plan.result.status.value}, "
            f"objective {plan.result.objective or 0.0:,.0f} {self.loaded.spot.currency}, "
            f"{len(plan.bid_curves)} bid curves, {len(plan.dr_offers)} DR offers ({timing})"
        )

    def _publish_plan(self, plan: DayPlan, now: datetime, carbon_price_per_t: float) -> None:
        horizon = plan.horizon
        result = plan.result
        record = self._record(plan, carbon_price_per_t)
        self._show(
            now, horizon.start, horizon.interval, result.status.value, result.objective, record
        )
        if result.schedule is not None and self.store is not None:
            # Everything the API shows of a plan, so that a restarted engine shows it too.
            stored = {**record, "power_kw": result.schedule.power_kw.round(3).tolist()}
            self.store.save_schedule(
                now, horizon.start, horizon.interval, result.status.value, result.objective, stored
            )
        if result.ok and (plan.bid_curves or plan.dr_offers):
            self.state.publish_bids(now, plan.bid_curves, plan.dr_offers)

    def restore(self, stored: StoredSchedule) -> None:
        """After a restart: the last stored plan back as the schedule under the awards and,
        as far as it was saved, in the API's state, until the next plan replaces it."""
        record = stored.payload if isinstance(stored.payload, dict) else {}
        power = np.asarray(record.get("power_kw", []), dtype=float)
        if power.ndim != 2 or not power.size or stored.status not in ("optimal", "feasible"):
            return
        park_kw = [float(v) for v in power.sum(axis=0)]
        self.targets.set_schedule(stored.start, stored.interval, park_kw)
        try:
            self._show(
                stored.created,
                stored.start,
                stored.interval,
                stored.status,
                stored.objective,
                record,
            )
        except (KeyError, TypeError, ValueError, StateError) as exc:
            # A plan saved by an older version: the targets are back, the views wait for
            # the next plan.
            log.warning("stored plan of %s not shown: %s", stored.start.isoformat(), exc)

    def _record(self, plan: DayPlan, carbon_price_per_t: float) -> dict[str, Any]:
        """What the API shows of a plan, as JSON values (also what the store keeps)."""
        park = plan.envelope.park
        record: dict[str, Any] = {
            "carbon_price_per_t": carbon_price_per_t or None,
            "envelope": {
                "expected_kw": [float(v) for v in park.baseline_kw],
                "min_kw": [float(v) for v in park.baseline_kw - park.down_kw],
                "max_kw": [float(v) for v in park.baseline_kw + park.up_kw],
            },
            "prices": {
                "price_per_mwh": [float(v) for v in plan.prices_per_mwh],
                "kind": "forecast" if self.prices.series is None else "file",
                "currency": self.loaded.spot.currency,
            },
        }
        schedule = plan.result.schedule
        if schedule is not None:
            record["asset_ids"] = list(schedule.asset_ids)
            record["power_kw"] = schedule.power_kw.tolist()
        return record

    def _show(
        self,
        computed_at: datetime,
        start: datetime,
        interval: timedelta,
        status: str,
        objective: float | None,
        record: Mapping[str, Any],
    ) -> None:
        """Publish a plan's record (`_record`) as the API's schedule, envelope and prices."""
        interval_min = int(interval.total_seconds() // 60)
        asset_ids = record.get("asset_ids", [])
        power = np.asarray(record.get("power_kw", []), dtype=float)
        if power.ndim == 2 and power.size and len(asset_ids) == power.shape[0]:
            carbon = record.get("carbon_price_per_t")
            self.state.publish_schedule(
                computed_at=computed_at,
                start=start,
                interval_min=interval_min,
                status=status,
                asset_kw={str(a): power[k].tolist() for k, a in enumerate(asset_ids)},
                park_kw=power.sum(axis=0).tolist(),
                objective=objective,
                carbon_price_per_t=None if carbon is None else float(carbon),
            )
        envelope = record.get("envelope")
        if isinstance(envelope, dict):
            self.state.publish_envelope(
                computed_at=computed_at,
                start=start,
                interval_min=interval_min,
                expected_kw=envelope["expected_kw"],
                min_kw=envelope["min_kw"],
                max_kw=envelope["max_kw"],
            )
        prices = record.get("prices")
        if isinstance(prices, dict):
            self.state.publish_prices(
                start=start,
                interval_min=interval_min,
                price_per_mwh=prices["price_per_mwh"],
                kind=str(prices["kind"]),
                currency=str(prices["currency"]),
            )

    def _submit(self, plan: DayPlan, day: date) -> None:
        if not plan.bid_curves and not plan.dr_offers:
            return
        tz = self.loaded.park.tz
        closes = self.loaded.spot.gate_closure.closes_at(day, tz)
        submitted_at = min(self.clock.now(), closes - timedelta(minutes=1))
        participant = self.loaded.park.id
        award_sets: list[AwardSet] = []
        if plan.bid_curves:
            spot = Submission(
                self.loaded.spot.id, participant, submitted_at, bid_curves=plan.bid_curves
            )
            award_sets.append(self._send(spot, submitted_at, day))
        dr = self.loaded.dr
        if plan.dr_offers and dr is not None:
            # Offered after the spot market cleared: only the reduction its award leaves, so
            # that a DR call on top of the award can be delivered.
            awarded = [a for s in award_sets for a in s.awards]
            offers = spare_dr_offers(
                plan.dr_offers, plan.envelope, self._held_kw(plan, awarded), dr
            )
            if offers != list(plan.dr_offers):
                self.state.publish_bids(self.clock.now(), plan.bid_curves, offers)
            if offers:
                dr_closes = dr.gate_closure.closes_at(day, tz)
                sent_at = min(submitted_at, dr_closes - timedelta(minutes=1))
                submission = Submission(dr.id, participant, sent_at, dr_offers=tuple(offers))
                award_sets.append(self._send(submission, submitted_at, day))
        received = self.clock.now()
        for award_set in award_sets:
            for award in award_set.awards:
                self.targets.add_award(award, received)
            for event in award_set.dr_events:
                self.targets.add_event(event)
                self.state.publish_dr_event(event)
                if self.store is not None:
                    self.store.save_dr_event(event)
            self.state.publish_awards(award_set.awards)
            if self.store is not None and award_set.awards:
                self.store.save_awards(award_set.awards, received)
        awarded = [a for s in award_sets for a in s.awards]
        events = [e for s in award_sets for e in s.dr_events]
        if awarded or events:
            mwh = sum(a.power_kw * a.interval.hours for a in awarded) / 1000
            self.report(
                f"market: {len(awarded)} intervals awarded ({mwh:+.1f} MWh net), {len(events)} DR events"
            )

    def _send(self, submission: Submission, submitted_at: datetime, day: date) -> AwardSet:
        if self.store is not None:
            # what was sent, in the documented submission format
            payload = json.loads(submission_to_json(submission))
            self.store.save_bids(submitted_at, submission.market, day.isoformat(), payload)
        return self.market(submission)

    @staticmethod
    def _held_kw(plan: DayPlan, awarded: Sequence[Award]) -> FloatArray:
        """The park's net power per interval of the plan as the spot market holds it: the
        award where there is one, else the planned schedule, else the baseline."""
        held = np.asarray(plan.envelope.park.baseline_kw, dtype=float).copy()
        schedule = plan.result.schedule
        if schedule is not None:
            held = np.asarray(schedule.park_kw, dtype=float).copy()
        index = {start: k for k, start in enumerate(plan.horizon.starts())}
        for award in awarded:
            k = index.get(award.interval.start)
            if k is not None:
                held[k] = award.power_kw
        return held

    def simulated_market(self, submission: Submission) -> AwardSet:
        """Clear against the price series (price-taker) and call DR at the day's price peaks."""
        curves = submission.bid_curves
        offers = submission.dr_offers
        intervals = [c.interval for c in curves] or [o.interval for o in offers]
        start = min(i.start for i in intervals)
        length = intervals[0].length
        count = int((max(i.end for i in intervals) - start) // length)
        horizon = Horizon(start, length, count)
        prices = self.prices.on(horizon)
        price_map = {s: float(p) for s, p in zip(horizon.starts(), prices, strict=True)}
        calls = []
        if self.loaded.dr is not None:
            trigger = float(np.quantile(prices, DR_TRIGGER_QUANTILE))
            if math.isfinite(trigger):
                # the simulated grid pays its DR product's cap: offers at or below it are called
                calls = dr_calls_from_prices(
                    price_map,
                    self.loaded.dr,
                    trigger,
                    call_price_per_mwh=self.loaded.dr.bid_price_cap_per_mwh,
                )
        simulator = MarketSimulator(self.loaded.spot, price_map, self.loaded.dr, calls)
        return simulator.submit(submission, cleared_at=self.clock.now())
