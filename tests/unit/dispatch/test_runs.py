"""Curtailment runs priced by dynamic programming (dispatch/runs.py), against the best of every
on/off pattern the plant allows, each costed exactly by the linear program with it fixed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch import fast
from dispatch.problem import DispatchProblem
from dispatch.runs import RUN_MIN_DEPTH, PlantRules, Rebound, priced_runs
from tests.unit.dispatch.test_curtailment_runs import (
    exact,
    hourly,
    load,
    plant_allows,
    rebounding,
)


def best_pattern_cost(problem: DispatchProblem) -> float:
    """The exact optimum: every pattern the plant allows, its depths and draws by the LP."""
    t = problem.intervals
    _, rest, forced_rest = fast.curtailment_rules(problem.curtailable, t)
    duration = int(problem.curtailable.max_duration_intervals[0])
    model = fast.Rounded(fast.build(problem), exact())
    cols = model.built.rounding[0].cols.astype(np.int32)
    best = np.inf
    for pattern in itertools.product([False, True], repeat=t):
        if not plant_allows(list(pattern), duration, int(rest[0]), int(forced_rest[0])):
            continue
        on = np.array(pattern, dtype=float)
        model.highs.changeColsBounds(cols.size, cols, on, on)
        run = model.again()
        if run.has_solution:
            best = min(best, run.objective)
    return best


def rounded_cost(problem: DispatchProblem, *, priced: bool) -> float:
    model = fast.Rounded(fast.build(problem), exact())
    physical = model.physical(model.relax(), priced=priced)
    assert physical.has_solution
    return physical.objective


SWINGS = [900.0, 900.0, 900.0, 300.0, 300.0, 900.0, -500.0, -500.0, 100.0, 100.0]
PEAKS = [300.0, 900.0, 700.0, 1200.0, 150.0, 800.0, 950.0, 400.0, 1000.0, 200.0]


@pytest.mark.parametrize(
    ("prices", "terms", "covering_loses"),
    [
        # Runs of one hour with an hour between keep the rebound owed until the price is
        # negative, where drawing it back earns: covering the relaxation misses that.
        (SWINGS, {"duration": 2, "rest": 0, "window": 2, "rebound": 1.0, "cost": 10.0}, True),
        (SWINGS, {"duration": 2, "rest": 0, "window": 3, "rebound": 0.5, "cost": 10.0}, False),
        (PEAKS, {"duration": 3, "rest": 1, "window": 2, "rebound": 0.5, "cost": 100.0}, True),
        (PEAKS, {"duration": 2, "rest": 0, "window": 4, "rebound": 1.0, "cost": 100.0}, False),
        (
            [800.0, 100.0, 900.0, 950.0, -100.0, 900.0, 100.0, 1000.0, 0.0, 50.0],
            {"duration": 3, "rest": 0, "window": 2, "rebound": 0.5, "cost": 50.0},
            False,
        ),
    ],
)
def test_priced_runs_find_the_best_pattern(
    prices: list[float], terms: dict[str, float], covering_loses: bool
) -> None:
    problem = hourly(prices, load(len(prices), **terms))  # type: ignore[arg-type]
    best = best_pattern_cost(problem)
    assert rounded_cost(problem, priced=True) == pytest.approx(best, abs=1e-6)
    covering = rounded_cost(problem, priced=False)
    if covering_loses:
        assert covering > best + 1.0
    else:
        assert covering == pytest.approx(best, abs=1e-6)


PRICE_LEVELS = [-300.0, 0.0, 100.0, 300.0, 600.0, 900.0, 1200.0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rebounding(8, st.sampled_from(PRICE_LEVELS), 3))
def test_priced_runs_are_best_but_for_the_least_reductions_rebound(
    problem: DispatchProblem,
) -> None:
    # The runs are exact but for the rebound of reductions at the least depth, which is
    # costed at the cheapest later price instead of where it is drawn: each such interval may
    # be misjudged by its rebound times the spread of the prices.
    block = problem.curtailable
    model = fast.Rounded(fast.build(problem), exact())
    physical = model.physical(model.relax())
    assert physical.has_solution
    reduced = block.baseline_kw[0] - fast.schedule_of(model.built, physical.x).power_of("load")
    depth = block.reduction_max_kw[0]
    least = int(np.sum((reduced > 1e-6) & (reduced < 0.5 * depth)))
    spread = float(problem.price_per_mwh.max() - problem.price_per_mwh.min()) / 1000.0
    misjudged = least * RUN_MIN_DEPTH * float(depth.max()) * block.rebound_fraction[0] * spread
    assert physical.objective <= best_pattern_cost(problem) + misjudged + 1e-6


def test_a_chain_of_runs_carries_the_rebound_to_a_negative_price() -> None:
    # One load, 1 kW deep, rebound 1:1 drawn at up to 2 kW, runs of at most two intervals
    # (a full one rests two, the rebound window), prices per kW·interval, no cost.
    price = np.array([[1000.0, 500.0, 500.0, 500.0, -1000.0]])
    on = priced_runs(
        price.copy(),
        price,
        np.ones((1, 5)),
        PlantRules(np.array([2]), np.array([0]), np.array([2])),
        Rebound(np.array([1.0]), np.array([2]), np.array([2.0])),
        0.0,
    )
    # Reduce at 1000 and, after an interval off, at 500 twice: 2000 saved. The first run is
    # released early, so its rebound waits with the second's; two of the three owed are drawn
    # at -1000 (earning 2000), the third is owed at the end (price 0): 4000. Drawing the first
    # run's back at 500 instead, or a full first run (which rests two), is worth less.
    assert on[0].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_long_runs_keep_the_plant_rules_and_take_the_dear_hours() -> None:
    # Runs of up to 95 quarter-hours would owe up to 190 intervals' rebound: in at most
    # OWED_MAX_STEPS steps, the pattern still one the plant allows, and the dearest hours
    # (whose saving beats any rebound) reduced.
    t = 96
    rng = np.random.default_rng(3)
    price = rng.uniform(-0.2, 1.0, (1, t))
    price[0, 40:48] = 5.0
    on = priced_runs(
        price - 0.1,
        price,
        np.full((1, t), 2.0),
        PlantRules(np.array([95]), np.array([4]), np.array([8])),
        Rebound(np.array([1.0]), np.array([8]), np.array([2.0])),
        0.0,
    )
    assert plant_allows(on[0].astype(bool).tolist(), 95, 4, 8)
    assert on[0, 40:48].all()
