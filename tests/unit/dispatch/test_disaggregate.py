"""Disaggregation meets a feasible award exactly at least cost, and reports what it cannot meet."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from dispatch.disaggregate import disaggregate, target_from_awards
from dispatch.forecast import forecast_park
from dispatch.problem import BatteryBlock, build_problem, empty_problem
from dispatch.series import Horizon
from dispatch.solve import Backend, SolveOptions, Status, ViolationKind, solve
from market.prices import synthetic_prices
from vpp.config.loader import load_park
from vpp.domain import Award, Interval

ROOT = Path(__file__).resolve().parents[3]
START = datetime(2025, 6, 4, tzinfo=UTC)


def two_batteries() -> BatteryBlock:
    t = 2
    return BatteryBlock(
        asset_ids=("cheap", "dear"),
        enterprise_index=np.zeros(2, np.int64),
        charge_max_kw=np.full((2, t), 500.0),
        discharge_max_kw=np.full((2, t), 500.0),
        energy_min_kwh=np.zeros(2),
        energy_max_kwh=np.full(2, 1000.0),
        energy_initial_kwh=np.full(2, 1000.0),
        energy_terminal_kwh=np.zeros(2),
        charge_efficiency=np.ones(2),
        discharge_efficiency=np.ones(2),
        degradation_cost_per_mwh=np.array([10.0, 50.0]),
    )


@pytest.mark.parametrize("backend", [Backend.HIGHS, Backend.PYOMO])
def test_feasible_award_is_met_exactly_by_the_cheapest_assets(backend: Backend) -> None:
    horizon = Horizon(START, timedelta(hours=1), 2)
    problem = replace(empty_problem(horizon, [100.0, 100.0]), batteries=two_batteries())
    split = disaggregate(problem, np.array([-600.0, np.nan]), SolveOptions(backend=backend))
    assert split.met
    assert split.result.status is Status.OPTIMAL
    schedule = split.result.schedule
    assert schedule is not None
    assert schedule.park_kw[0] == pytest.approx(-600.0, abs=1e-6)
    # The battery with less wear delivers all it can (500 kW), the other the rest.
    assert schedule.power_of("cheap")[0] == pytest.approx(-500.0, abs=1e-6)
    assert schedule.power_of("dear")[0] == pytest.approx(-100.0, abs=1e-6)


def test_infeasible_award_gives_the_closest_plan_and_its_shortfall() -> None:
    horizon = Horizon(START, timedelta(hours=1), 2)
    problem = replace(empty_problem(horizon, [100.0, 100.0]), batteries=two_batteries())
    split = disaggregate(problem, np.array([-1500.0, -200.0]))
    assert not split.met
    assert split.result.ok
    # Both batteries at full discharge give 1000 kW: 500 kW short of the award.
    np.testing.assert_allclose(split.delivered_kw, [-1000.0, -200.0], atol=1e-6)
    np.testing.assert_allclose(split.shortfall_kw, [-500.0, 0.0], atol=1e-6)
    assert split.result.diagnosis is not None
    kinds = {v.kind for v in split.result.diagnosis.soft}
    assert ViolationKind.TARGET in kinds


def test_award_from_another_plan_of_the_small_park_is_met_exactly() -> None:
    park = load_park(ROOT / "tests/fixtures/small_park.yaml", ROOT / "config/markets").park
    horizon = Horizon(datetime(2025, 6, 4, tzinfo=park.tz), timedelta(minutes=15), 32)
    forecast = forecast_park(park, horizon)
    problem = build_problem(park, horizon, synthetic_prices(horizon, seed=7), forecast)
    # A feasible award: the plan the park would make at other prices.
    plan = solve(problem.with_prices(synthetic_prices(horizon, seed=8)))
    assert plan.schedule is not None
    split = disaggregate(problem, plan.schedule.park_kw)
    assert split.met, split.shortfall_kw
    assert split.result.objective is not None


def test_awards_map_onto_the_horizon() -> None:
    horizon = Horizon(START, timedelta(minutes=15), 8)
    awards = [
        Award(Interval(START + timedelta(hours=1), timedelta(hours=1)), 250.0, 400.0, "spot"),
    ]
    target = target_from_awards(horizon, awards)
    assert np.isnan(target[:4]).all()
    np.testing.assert_array_equal(target[4:], 250.0)
