"""Aggregated market bids: price-quantity curves per interval and demand-response offers.

Bid curves come from the optimiser itself: the schedule is solved under shifted price
scenarios around the forecast price, and each interval's optimal net park power at each
scenario price is one point of its curve. The points are made non-increasing (isotonic fit),
turned into steps, and merged until the market's rules hold: at most `max_bid_segments` steps,
every step moving at least `min_segment_kw`, prices inside [floor, cap], and a flat one-step
bid when the curve's range is below `min_aggregated_capacity_kw`.

DR offers come from the flexibility envelope: per interval the largest reduction the park can
hold for the product's minimum duration, priced at the marginal cost of the assets it uses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dispatch import fast
from dispatch.flexibility import AssetFlexibility, ParkEnvelope
from dispatch.problem import DispatchProblem, default_penalty
from dispatch.series import FloatArray, Horizon
from dispatch.solve import Backend, Method, Result, Schedule, SolveOptions, solve
from market.rules import DemandResponseRules, RuleSetBase, SpotMarketRules
from vpp.domain import BidCurve, BidStep, DrOffer, Interval

DEFAULT_RELATIVE_OFFSETS = (-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class BidOptions:
    """How bid curves are sampled and shaped.

    Scenario s shifts every interval's forecast price by `offset_s` (then clips it to the
    market's floor and cap). Offsets are `price_offsets_per_mwh` when given, else
    `relative_offsets` × the mean absolute forecast price (at least 5 % of the market's price
    range), plus one shift down to the floor and one up to the cap when `include_bounds`.
    Powers are rounded to `power_resolution_kw` so that solver noise makes no steps. Each
    scenario solve stops after `scenario_time_limit_s` with its best schedule; `warm_start`
    reuses one solver model across scenarios where the back-end allows it.
    """

    price_offsets_per_mwh: tuple[float, ...] | None = None
    relative_offsets: tuple[float, ...] = DEFAULT_RELATIVE_OFFSETS
    include_bounds: bool = True
    power_resolution_kw: float = 0.1
    scenario_time_limit_s: float | None = 10.0
    warm_start: bool = True


@dataclass(frozen=True, slots=True)
class DrOptions:
    """How DR offers are priced: marginal asset cost + `markup_per_mwh`, at least
    `min_price_per_mwh`, at most the product's cap; `invitation` picks the notice assets need."""

    markup_per_mwh: float = 0.0
    min_price_per_mwh: float = 0.0
    invitation: str = "day_ahead"


# --- price scenarios --------------------------------------------------------------------------


def price_offsets(
    prices_per_mwh: FloatArray, rules: SpotMarketRules, options: BidOptions
) -> list[float]:
    """The price shifts to solve at, ascending, 0 (the forecast itself) always included."""
    if options.price_offsets_per_mwh is not None:
        offsets = set(options.price_offsets_per_mwh)
    else:
        span = rules.price_cap_per_mwh - rules.price_floor_per_mwh
        scale = max(float(np.mean(np.abs(prices_per_mwh))), 0.05 * span)
        offsets = {f * scale for f in options.relative_offsets}
    offsets.add(0.0)
    if options.include_bounds:
        offsets.add(rules.price_floor_per_mwh - float(np.max(prices_per_mwh)))
        offsets.add(rules.price_cap_per_mwh - float(np.min(prices_per_mwh)))
    return sorted(offsets)


def price_scenarios(
    prices_per_mwh: FloatArray, rules: SpotMarketRules, options: BidOptions | None = None
) -> list[FloatArray]:
    """Shifted copies of the forecast prices, clipped to [floor, cap], one per offset."""
    options = options or BidOptions()
    prices = np.asarray(prices_per_mwh, dtype=float)
    scenarios: list[FloatArray] = []
    seen: set[bytes] = set()
    for offset in price_offsets(prices, rules, options):
        shifted = np.clip(prices + offset, rules.price_floor_per_mwh, rules.price_cap_per_mwh)
        key = shifted.tobytes()
        if key not in seen:  # two offsets beyond a bound give the same scenario: solve once
            seen.add(key)
            scenarios.append(shifted)
    return scenarios


# --- curve shaping ----------------------------------------------------------------------------


def non_increasing_fit(
    values: Sequence[float], weights: Sequence[float] | None = None
) -> FloatArray:
    """Least-squares non-increasing fit (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for i, value in enumerate(values):
        blocks.append([float(value), 1.0 if weights is None else float(weights[i]), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            mean_b, weight_b, count_b = blocks.pop()
            mean_a, weight_a, count_a = blocks[-1]
            weight = weight_a + weight_b
            blocks[-1] = [
                (mean_a * weight_a + mean_b * weight_b) / weight,
                weight,
                count_a + count_b,
            ]
    out: list[float] = []
    for mean, _, count in blocks:
        out.extend([mean] * int(count))
    return np.asarray(out, dtype=float)


@dataclass(slots=True)
class _Step:
    low: float  # price from (exclusive, except the first step)
    high: float  # price up to (inclusive)
    power_kw: float


def _merge_at(steps: list[_Step], i: int) -> None:
    """Merge step i with step i + 1, keeping the power of the one covering more prices."""
    a, b = steps[i], steps[i + 1]
    power = a.power_kw if a.high - a.low >= b.high - b.low else b.power_kw
    steps[i : i + 2] = [_Step(a.low, b.high, power)]


def _rounded(values: FloatArray, resolution: float) -> FloatArray:
    if resolution <= 0:
        return values
    # The second rounding removes the binary residue of the multiplication (11.100000000001).
    return np.asarray(np.round(np.round(values / resolution) * resolution, 9), dtype=float)


def shape_curve(
    interval: Interval,
    prices_per_mwh: Sequence[float],
    powers_kw: Sequence[float],
    rules: SpotMarketRules,
    *,
    reference_power_kw: float | None = None,
    power_resolution_kw: float = 0.1,
) -> BidCurve:
    """A rule-abiding step curve through sampled (price, optimal power) points.

    Points are sorted by price (equal prices averaged), fitted non-increasing, and cut into
    steps at the midpoints between sampled prices; the last step reaches the cap. Steps with
    equal power merge; then the two neighbours closest in power merge until every step moves at
    least `min_segment_kw` and there are at most `max_bid_segments`. A curve whose range is
    below `min_aggregated_capacity_kw` becomes one flat step at `reference_power_kw` (default:
    the power at the sampled price closest to the middle of the samples).
    """
    if len(prices_per_mwh) != len(powers_kw) or not prices_per_mwh:
        raise ValueError("a curve needs as many prices as powers, and at least one")
    floor, cap = rules.price_floor_per_mwh, rules.price_cap_per_mwh
    clipped = np.clip(np.asarray(prices_per_mwh, dtype=float), floor, cap)
    powers = np.asarray(powers_kw, dtype=float)
    unique, inverse, counts = np.unique(clipped, return_inverse=True, return_counts=True)
    mean_power = np.bincount(inverse, weights=powers) / counts
    fitted = non_increasing_fit(mean_power.tolist(), counts.tolist())
    fitted = _rounded(fitted, power_resolution_kw)

    bounds = [*((unique[:-1] + unique[1:]) / 2).tolist(), cap]
    steps: list[_Step] = []
    low = floor
    for high, power in zip(bounds, fitted.tolist(), strict=True):
        if steps and steps[-1].power_kw == power:
            steps[-1].high = high
        else:
            steps.append(_Step(low, high, power))
        low = high

    def smallest_drop() -> tuple[float, int]:
        drops = [(steps[i].power_kw - steps[i + 1].power_kw, i) for i in range(len(steps) - 1)]
        return min(drops)

    while len(steps) > 1:
        drop, i = smallest_drop()
        if drop >= rules.min_segment_kw and drop > 0 and len(steps) <= rules.max_bid_segments:
            break
        _merge_at(steps, i)

    if len(steps) > 1 and steps[0].power_kw - steps[-1].power_kw < rules.min_aggregated_capacity_kw:
        if reference_power_kw is None:
            middle = (unique[0] + unique[-1]) / 2
            reference_power_kw = float(fitted[int(np.argmin(np.abs(unique - middle)))])
        steps = [
            _Step(
                floor, cap, float(_rounded(np.array([reference_power_kw]), power_resolution_kw)[0])
            )
        ]
    steps[-1].high = cap
    return BidCurve(interval, tuple(BidStep(s.high, s.power_kw) for s in steps))


def curves_from_points(
    horizon: Horizon,
    scenario_prices: Sequence[FloatArray],
    scenario_powers: Sequence[FloatArray],
    rules: SpotMarketRules,
    *,
    reference: int | None = None,
    power_resolution_kw: float = 0.1,
) -> list[BidCurve]:
    """One curve per interval from scenario solves: (prices, net power) arrays per scenario.

    `reference` indexes the scenario at the forecast price; a flat bid takes its power.
    """
    prices = np.vstack([np.asarray(p, dtype=float) for p in scenario_prices])
    powers = np.vstack([np.asarray(p, dtype=float) for p in scenario_powers])
    curves: list[BidCurve] = []
    for k, start in enumerate(horizon.starts()):
        curves.append(
            shape_curve(
                Interval(start, horizon.interval),
                prices[:, k].tolist(),
                powers[:, k].tolist(),
                rules,
                reference_power_kw=None if reference is None else float(powers[reference, k]),
                power_resolution_kw=power_resolution_kw,
            )
        )
    return curves


@dataclass(frozen=True, slots=True)
class BidSamples:
    """The scenario solves behind a set of curves: prices and net park power per scenario.

    `prices_per_mwh[s]` and `net_kw[s]` are (T,) arrays of the solved scenarios, in ascending
    offset order; `reference` indexes the unshifted forecast (None when it failed); `failed`
    holds (offset, status) of every scenario without a schedule.
    """

    horizon: Horizon
    offsets_per_mwh: tuple[float, ...]
    prices_per_mwh: tuple[FloatArray, ...]
    net_kw: tuple[FloatArray, ...]
    reference: int | None
    failed: tuple[tuple[float, str], ...]
    solves: int
    wall_s: float
    warm_solves: int = 0


def net_park_kw(problem: DispatchProblem, schedule: Schedule) -> FloatArray:
    """Net park power per interval: the scheduled assets plus unenrolled power behind meters."""
    return np.asarray(schedule.park_kw + problem.enterprise_base_kw.sum(axis=0), dtype=float)


def sample_bid_points(
    problem: DispatchProblem,
    rules: SpotMarketRules,
    scenarios: Sequence[FloatArray] | None = None,
    *,
    options: BidOptions | None = None,
    solve_options: SolveOptions | None = None,
) -> BidSamples:
    """Solve `problem` at every price scenario and record the optimal net park power.

    Default scenarios shift the problem's own prices (`price_scenarios`). Export prices move
    with the import price and keep their gap below it. Scenarios that end without a schedule
    are recorded in `failed` and left out. Each solve is limited to `scenario_time_limit_s`;
    a schedule found by then (status feasible) still gives a point.
    """
    options = options or BidOptions()
    solve_options = solve_options or SolveOptions()
    if options.scenario_time_limit_s is not None:
        solve_options = replace(
            solve_options,
            time_limit_s=min(solve_options.time_limit_s, options.scenario_time_limit_s),
        )
    started = time.perf_counter()
    base = np.asarray(problem.price_per_mwh, dtype=float)
    export_gap = base - np.asarray(problem.export_price_per_mwh, dtype=float)
    if scenarios is None:
        scenarios = price_scenarios(base, rules, options)
    ordered = sorted(
        (np.asarray(p, dtype=float) for p in scenarios), key=lambda p: float(np.mean(p - base))
    )
    # One penalty for every scenario, so that only the energy prices differ between solves.
    penalty = max([problem.penalty_per_mwh, *(default_penalty(p) for p in ordered)])
    problem = replace(problem, penalty_per_mwh=penalty)
    solver = _ScenarioSolver(problem, solve_options, warm=options.warm_start)
    results: dict[int, Result] = {}
    # Solve from the forecast price outwards so that each warm start is the nearest solution.
    for index in sorted(range(len(ordered)), key=lambda i: abs(float(np.mean(ordered[i] - base)))):
        results[index] = solver.solve(ordered[index], ordered[index] - export_gap)

    offsets: list[float] = []
    prices: list[FloatArray] = []
    powers: list[FloatArray] = []
    failed: list[tuple[float, str]] = []
    reference: int | None = None
    # The forecast itself, as the market's bounds let it be bid.
    unshifted = np.clip(base, rules.price_floor_per_mwh, rules.price_cap_per_mwh)
    for index, scenario in enumerate(ordered):
        offset = float(np.mean(scenario - base))
        schedule = results[index].schedule
        if schedule is None:
            failed.append((offset, results[index].status.value))
            continue
        if np.array_equal(scenario, unshifted):
            reference = len(prices)
        offsets.append(offset)
        prices.append(scenario)
        powers.append(net_park_kw(problem, schedule))
    return BidSamples(
        problem.horizon,
        tuple(offsets),
        tuple(prices),
        tuple(powers),
        reference,
        tuple(failed),
        len(ordered),
        time.perf_counter() - started,
        solver.warm_solves,
    )


class _ScenarioSolver:
    """Solves one problem at many prices.

    With the direct HiGHS back-end the model is kept between scenarios and only its
    price-dependent costs change: a monolithic problem through `fast.PriceSweep` (the LP
    relaxation and its rounding, each from the last basis; a MIP only when the rounding is
    not within the gap), a decomposed one through `fast.Decomposed.resolve`. Other back-ends,
    and every scenario when `warm` is off, go through `solve`.
    """

    def __init__(self, problem: DispatchProblem, options: SolveOptions, *, warm: bool) -> None:
        self.problem = problem
        self.options = options
        self.warm_solves = 0
        many = len(problem.asset_ids) > options.decompose_above_assets
        self.decompose = options.method is Method.DECOMPOSED or (
            options.method is Method.AUTO and many
        )
        self.warm = warm and options.backend is Backend.HIGHS
        self.sweep: fast.PriceSweep | None = None
        self.decomposed: fast.Decomposed | None = None
        self.decomposed_ok = False

    def solve(self, price: FloatArray, export_price: FloatArray) -> Result:
        if not self.warm:
            return solve(self.problem.with_prices(price, export_price), self.options)
        if self.decompose:
            return self._decomposed(price, export_price)
        if self.sweep is None:
            self.sweep = fast.PriceSweep(self.problem, self.options)
        fallbacks = self.sweep.fallbacks
        result = self.sweep.solve(price, export_price)
        self.warm_solves += result.schedule is not None and self.sweep.fallbacks == fallbacks
        return result

    def _decomposed(self, price: FloatArray, export_price: FloatArray) -> Result:
        if self.decomposed is None or not self.decomposed_ok:
            shifted = self.problem.with_prices(price, export_price)
            if self.problem.target_kw is not None and np.any(np.isfinite(self.problem.target_kw)):
                return solve(shifted, self.options)  # a target couples every asset
            self.decomposed = fast.Decomposed(shifted, self.options)
            result = self.decomposed.solve()
        else:
            result = self.decomposed.resolve(price, export_price)
        self.warm_solves += result.schedule is not None
        # A part without a schedule leaves no model to start from: build afresh next time.
        self.decomposed_ok = result.schedule is not None
        return result


def build_bid_curves(
    problem: DispatchProblem,
    rules: SpotMarketRules,
    scenarios: Sequence[FloatArray] | None = None,
    *,
    options: BidOptions | None = None,
    solve_options: SolveOptions | None = None,
) -> list[BidCurve]:
    """One rule-abiding bid curve per interval of the problem's horizon (empty if no solve
    succeeded: the caller decides the fallback). See `sample_bid_points` and `shape_curve`."""
    options = options or BidOptions()
    samples = sample_bid_points(
        problem, rules, scenarios, options=options, solve_options=solve_options
    )
    return curves_from_samples(samples, rules, options)


def curves_from_samples(
    samples: BidSamples, rules: SpotMarketRules, options: BidOptions | None = None
) -> list[BidCurve]:
    """Curves from recorded scenario solves (empty when there are none)."""
    options = options or BidOptions()
    if not samples.net_kw:
        return []
    return curves_from_points(
        samples.horizon,
        samples.prices_per_mwh,
        samples.net_kw,
        rules,
        reference=samples.reference,
        power_resolution_kw=options.power_resolution_kw,
    )


# --- demand-response offers -------------------------------------------------------------------


def _notice_limit(rules: DemandResponseRules, invitation: str) -> float:
    terms = rules.invitation(invitation)
    if terms is not None:
        return terms.notice_min
    return max(i.notice_min for i in rules.invitations)


def build_dr_offers(
    envelope: ParkEnvelope,
    rules: DemandResponseRules,
    options: DrOptions | None = None,
) -> list[DrOffer]:
    """Capacity offers per interval for a DR product, from the park's flexibility envelope.

    The offer at interval k is the largest reduction (increase, for an increase product) the
    park can hold for `min_duration_min` from k, using only assets that take the invitation's
    notice and cost at most the price cap. Its price is the cost of the dearest asset needed
    (merit order) plus the markup. Offers below `min_response_kw` are dropped, and so are runs
    of consecutive offers shorter than the minimum duration.
    """
    options = options or DrOptions()
    horizon = envelope.horizon
    needed = max(1, math.ceil(rules.min_duration_min / (horizon.hours * 60) - 1e-9))
    notice = _notice_limit(rules, options.invitation)
    cap = rules.bid_price_cap_per_mwh
    increase = rules.direction == "increase"
    eligible = [
        a
        for a in envelope.assets
        if a.notice_min <= notice
        and (increase or a.down_cost_per_mwh + options.markup_per_mwh <= cap)
    ]
    if not eligible or needed > horizon.intervals:
        return []

    def held(assets: Sequence[AssetFlexibility]) -> FloatArray:
        return envelope.park_held_kw(needed, up=increase, assets=assets)

    full = held(eligible)
    price = np.full(horizon.intervals, math.nan)
    if increase:
        price[:] = max(options.min_price_per_mwh, options.markup_per_mwh)
    else:
        # Merit order: the cheapest prefix of assets (by cost) that reaches the full amount.
        for cost in sorted({a.down_cost_per_mwh for a in eligible}):
            prefix = [a for a in eligible if a.down_cost_per_mwh <= cost]
            reached = held(prefix) >= full - 1e-6
            price = np.where(np.isnan(price) & reached, cost, price)
        price = np.maximum(price + options.markup_per_mwh, options.min_price_per_mwh)
    price = np.minimum(price, cap)

    offered = full >= max(rules.min_response_kw, 1e-6)
    offers: list[DrOffer] = []
    run: list[int] = []
    for k in [*range(horizon.intervals), None]:
        if k is not None and offered[k]:
            run.append(k)
            continue
        if len(run) >= needed:
            for j in run:
                amount = float(full[j])
                offers.append(
                    DrOffer(
                        Interval(horizon.start + horizon.interval * j, horizon.interval),
                        -amount if increase else amount,
                        float(price[j]),
                    )
                )
        run = []
    return offers


def spare_dr_offers(
    offers: Sequence[DrOffer], envelope: ParkEnvelope, awarded_kw: FloatArray, dr: RuleSetBase
) -> list[DrOffer]:
    """DR offers cut to the reduction left below the spot award (`awarded_kw`: the park's
    net power the spot market holds it to, per interval of the envelope's horizon).

    Per interval the park can hold a reduction of `held` below its uncontrolled baseline for
    the product's minimum duration (the envelope); the award already takes `baseline - award`
    of it. An offer keeps the smallest spare of the duration it must be held for; offers below
    the product's minimum response, and runs of offers shorter than its minimum duration,
    are dropped.
    """
    if not isinstance(dr, DemandResponseRules) or not offers:
        return []
    horizon = envelope.horizon
    needed = max(1, math.ceil(dr.min_duration_min / (horizon.hours * 60) - 1e-9))
    baseline = np.sum([np.asarray(b, dtype=float) for b in envelope.baselines_kw.values()], axis=0)
    held = envelope.park_held_kw(needed, up=False)
    spare = np.maximum(held - np.maximum(baseline - awarded_kw, 0.0), 0.0)
    # What can be held from k on is limited by the smallest spare over the duration.
    padded = np.concatenate([spare, np.full(needed - 1, np.inf)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, needed).min(axis=1)
    index = {start: k for k, start in enumerate(horizon.starts())}
    kept: list[DrOffer] = []
    for offer in offers:
        k = index[offer.interval.start]
        # Rounded down to 0.1 kW: an offer never exceeds what is spare.
        amount = min(offer.reduction_kw, math.floor(float(windows[k]) * 10.0) / 10.0)
        if amount >= max(dr.min_response_kw, 1e-6):
            kept.append(replace(offer, reduction_kw=amount))
    runs: list[list[DrOffer]] = []
    for offer in kept:
        if runs and runs[-1][-1].interval.end == offer.interval.start:
            runs[-1].append(offer)
        else:
            runs.append([offer])
    return [o for run in runs if len(run) >= needed for o in run]
