"""Curtailable loads as the plant runs them (adapters/sim.py): a reduction of any depth counts
towards `max_duration`, a run that reaches it is released and rests max(rest, rebound window),
and a rebound is drawn after the run. Optima found by enumerating every on/off pattern."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch import fast
from dispatch.problem import CurtailableBlock, DispatchProblem, empty_problem
from dispatch.series import Horizon
from dispatch.solve import Backend, Method, SolveOptions, Status, solve

START = datetime(2025, 6, 4, tzinfo=UTC)


def plant_allows(on: list[bool], duration: int, rest: int, forced_rest: int) -> bool:
    """Whether the plant could reduce in exactly the intervals `on` (the simulator's rules:
    a run is force-released after `duration`, then rests `forced_rest`, else `rest`)."""
    run = resting = 0
    for reducing in on:
        if resting > 0:
            if reducing:
                return False
            resting -= 1
            continue
        if reducing:
            run += 1
            if run > duration:
                return False
        elif run:
            resting = (forced_rest if run >= duration else rest) - 1
            run = 0
    return True


def violations(
    reduce_kw: np.ndarray,
    draw_kw: np.ndarray,
    owed: np.ndarray,
    *,
    duration: int,
    rest: int,
    forced_rest: int,
    window: int,
) -> list[str]:
    """What a planned reduction, rebound draw and energy owed break of the plant's rules."""
    on = reduce_kw > 1e-6
    found = []
    if not plant_allows(on.tolist(), duration, rest, forced_rest):
        found.append("runs")
    if np.any(on & (draw_kw > 1e-6)):
        found.append("draws during a run")
    last_on = -(10**9)
    for t, reducing in enumerate(on):
        last_on = t if reducing else last_on
        if t - last_on >= window and owed[t] > 1e-4:
            found.append(f"owes {owed[t]:.3g} at {t}, a window after its run")
    return found


def load(
    t: int,
    *,
    duration: int,
    rest: int = 0,
    window: int = 1,
    rebound: float = 0.0,
    cost: float = 100.0,
    baseline_kw: float = 1000.0,
    reduction_kw: float = 400.0,
) -> CurtailableBlock:
    return CurtailableBlock(
        asset_ids=("load",),
        enterprise_index=np.zeros(1, np.int64),
        baseline_kw=np.full((1, t), baseline_kw),
        reduction_max_kw=np.full((1, t), reduction_kw),
        max_duration_intervals=np.array([duration]),
        rest_intervals=np.array([rest]),
        rebound_fraction=np.array([rebound]),
        rebound_window_intervals=np.array([window]),
        rebound_max_kw=np.array([max(rebound, 1.0) * reduction_kw]),
        cost_per_mwh=np.array([cost]),
    )


def hourly(prices: list[float], block: CurtailableBlock) -> DispatchProblem:
    horizon = Horizon(START, timedelta(hours=1), len(prices))
    return replace(empty_problem(horizon, prices), curtailable=block)


def exact(backend: Backend = Backend.HIGHS) -> SolveOptions:
    return SolveOptions(backend=backend, mip_gap=0.0, method=Method.MONOLITHIC, time_limit_s=30)


def best_by_enumeration(problem: DispatchProblem, rest: int, forced_rest: int) -> float:
    """Without rebound every interval on reduces fully (the price beats the cost): the best
    objective over every pattern the plant allows."""
    block = problem.curtailable
    t = problem.intervals
    price = problem.price_per_mwh
    baseline = block.baseline_kw[0]
    depth = block.reduction_max_kw[0]
    duration = int(block.max_duration_intervals[0])
    best = np.inf
    for pattern in itertools.product([False, True], repeat=t):
        if not plant_allows(list(pattern), duration, rest, forced_rest):
            continue
        reduce = np.where(pattern, depth, 0.0)
        cost = np.sum(price * (baseline - reduce) + block.cost_per_mwh[0] * reduce) / 1000.0
        best = min(best, float(cost))
    return best


@pytest.mark.parametrize("backend", [Backend.HIGHS, Backend.PYOMO])
def test_partial_reductions_cannot_chain_past_the_duration(backend: Backend) -> None:
    # 400 kW for at most 2 h, then (forced) 4 h of rest: the rebound window; no rest asked.
    problem = hourly([1000.0] * 8, load(8, duration=2, rest=0, window=4))
    result = solve(problem, exact(backend))
    assert result.status is Status.OPTIMAL
    assert result.schedule is not None
    reduce = 1000.0 - result.schedule.power_of("load")
    # The plant's best: runs of one hour with an hour between (released early, no rest)
    # and a last run of two, e.g. 1 0 1 0 1 0 1 1: five hours of 400 kW. The linear limit
    # (2 hours at full depth in any 3) would have promised six: 1 1 0 1 1 0 1 1.
    assert reduce.sum() == pytest.approx(5 * 400.0, abs=1e-4)
    assert plant_allows((reduce > 1e-6).tolist(), 2, 0, 4)
    assert result.objective == pytest.approx(8000.0 - 0.9 * 2000.0, abs=1e-4)
    assert result.objective == pytest.approx(best_by_enumeration(problem, 0, 4), abs=1e-4)


@pytest.mark.parametrize(("duration", "rest", "window"), [(1, 0, 3), (3, 2, 1), (2, 1, 2)])
def test_best_pattern_matches_enumeration(duration: int, rest: int, window: int) -> None:
    prices = [300.0, 900.0, 700.0, 1200.0, 150.0, 800.0, 950.0, 400.0, 1000.0]
    problem = hourly(prices, load(len(prices), duration=duration, rest=rest, window=window))
    forced_rest = max(rest, window)
    result = solve(problem, exact())
    assert result.schedule is not None
    expected = best_by_enumeration(problem, rest, forced_rest)
    assert result.objective == pytest.approx(expected, abs=1e-4)
    # The rounded relaxation lands on a pattern the plant allows, no better than the best.
    sweep = fast.PriceSweep(problem, replace(exact(), mip_gap=1.0))
    rounded = sweep.solve(problem.price_per_mwh)
    assert rounded.schedule is not None
    reduce = 1000.0 - rounded.schedule.power_of("load")
    assert plant_allows((reduce > 1e-6).tolist(), duration, rest, forced_rest)
    assert rounded.objective is not None
    assert rounded.objective >= expected - 1e-4


PRICES = st.floats(0, 1500)


@st.composite
def rebounding(
    draw: st.DrawFn,
    t: int = 12,
    price: st.SearchStrategy[float] = PRICES,
    longest: int = 4,
) -> DispatchProblem:
    """One load over `t` hours at `price`s, with runs of up to `longest` hours."""
    prices = draw(st.lists(price, min_size=t, max_size=t))
    block = load(
        t,
        duration=draw(st.integers(1, longest)),
        rest=draw(st.integers(0, 2)),
        window=draw(st.integers(1, 3)),
        rebound=draw(st.sampled_from([0.0, 0.5, 1.0])),
        cost=draw(st.floats(0, 400)),
    )
    return hourly(prices, block)


def _plan_violations(problem: DispatchProblem, built: fast.Built, x: np.ndarray) -> list[str]:
    block = problem.curtailable
    _, rest, forced_rest = fast.curtailment_rules(block, problem.intervals)
    schedule = fast.schedule_of(built, x)
    net = block.baseline_kw[0] - schedule.power_of("load")  # reduction - rebound draw
    owed = x[built.owed_cols[0]] if built.owed_cols.size else np.zeros(problem.intervals)
    return violations(
        np.maximum(net, 0.0),
        np.maximum(-net, 0.0),
        owed,
        duration=int(block.max_duration_intervals[0]),
        rest=int(rest[0]),
        forced_rest=int(forced_rest[0]),
        window=int(block.rebound_window_intervals[0]),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rebounding())
def test_plans_keep_the_plant_rules_and_the_bound_holds(problem: DispatchProblem) -> None:
    options = SolveOptions(mip_gap=0.0, time_limit_s=30)
    exact_run, _, _ = fast.solve_physical(problem, options, 1e18)
    assert exact_run.has_solution
    assert _plan_violations(problem, exact_run.built, exact_run.x) == []
    for as_bounds in (False, True):
        model = fast.Rounded(fast.build(problem, runs_as_bounds=as_bounds), options)
        relaxed = model.relax()
        physical = model.physical(relaxed)
        assert physical.has_solution
        assert _plan_violations(problem, physical.built, physical.x) == []
        # The relaxation bounds the exact optimum, which bounds any physical plan.
        assert relaxed.objective <= exact_run.objective + 1e-6
        assert exact_run.objective <= physical.objective + 1e-6


def test_a_re_priced_model_pays_the_new_last_price_for_rebound_owed_at_the_end() -> None:
    # Shedding 400 kW in the last hour saves its price but owes all of it back after the
    # horizon, at the last price: at 900/MWh (and 10/MWh of cost) it does not pay.
    problem = hourly([100.0, 100.0], load(2, duration=1, window=1, rebound=1.0, cost=10.0))
    dear = np.array([100.0, 900.0])
    fresh = solve(problem.with_prices(dear), exact())
    assert fresh.objective == pytest.approx(100.0 + 900.0, abs=1e-6)
    sweep = fast.PriceSweep(problem, exact())
    assert sweep.solve(problem.price_per_mwh).objective == pytest.approx(200.0, abs=1e-6)
    again = sweep.solve(dear)
    assert again.objective == pytest.approx(1000.0, abs=1e-6)
    assert again.schedule is not None
    np.testing.assert_allclose(again.schedule.power_of("load"), [1000.0, 1000.0], atol=1e-6)
