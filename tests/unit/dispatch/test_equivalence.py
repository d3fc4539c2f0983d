"""The Pyomo model and the direct HiGHS path reach the same optimum on the same problems; the
decomposition by enterprise matches the monolithic optimum where it claims to."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bench.reference import day_horizon, scenario
from dispatch.forecast import forecast_park
from dispatch.problem import DispatchProblem, build_problem
from dispatch.series import Horizon
from dispatch.solve import Backend, Method, SolveOptions, Status, solve
from market.prices import synthetic_prices
from vpp.config.loader import load_park

ROOT = Path(__file__).resolve().parents[3]


def small_park_problem(seed: int, *, hours: int = 24) -> DispatchProblem:
    park = load_park(ROOT / "tests/fixtures/small_park.yaml", ROOT / "config/markets").park
    horizon = Horizon(datetime(2025, 6, 4, tzinfo=park.tz), timedelta(minutes=15), hours * 4)
    prices = synthetic_prices(horizon, seed=seed)
    return build_problem(park, horizon, prices, forecast_park(park, horizon))


def exact(backend: Backend, method: Method = Method.MONOLITHIC) -> SolveOptions:
    return SolveOptions(backend=backend, method=method, mip_gap=0.0, time_limit_s=60)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_park_same_optimum_on_both_back_ends(seed: int) -> None:
    problem = small_park_problem(seed, hours=8)
    fast = solve(problem, exact(Backend.HIGHS))
    model = solve(problem, exact(Backend.PYOMO))
    assert fast.status is Status.OPTIMAL
    assert model.status is Status.OPTIMAL
    assert fast.objective is not None
    assert model.objective is not None
    assert fast.objective == pytest.approx(model.objective, rel=1e-6, abs=1e-3)
    assert fast.schedule is not None
    assert model.schedule is not None
    # Same assets, same net park power wherever the optimum is unique enough to pin it.
    assert fast.schedule.asset_ids == model.schedule.asset_ids


def test_negative_prices_and_limits_same_optimum_on_both_back_ends() -> None:
    problem = small_park_problem(3, hours=8)
    deep = problem.price_per_mwh - 600.0  # deep negative prices: batteries would burn energy
    problem = replace(problem.with_prices(deep), park_export_limit_kw=200.0)
    fast = solve(problem, exact(Backend.HIGHS))
    model = solve(problem, exact(Backend.PYOMO))
    assert fast.objective is not None
    assert model.objective is not None
    assert fast.objective == pytest.approx(model.objective, rel=1e-6, abs=1e-3)


def untimed(problem: DispatchProblem) -> DispatchProblem:
    """The problem with its loads' duration and rest limits lifted: a linear program, whose
    optimum both back-ends (and the decomposition) must prove."""
    block = problem.curtailable
    return replace(
        problem,
        curtailable=replace(
            block,
            max_duration_intervals=np.full_like(block.max_duration_intervals, problem.intervals),
            rest_intervals=np.zeros_like(block.rest_intervals),
        ),
    )


def test_synthetic_park_same_optimum_on_both_back_ends() -> None:
    park = scenario(40, seed=5)
    horizon = day_horizon(park)
    problem = build_problem(
        park, horizon, synthetic_prices(horizon, seed=5), forecast_park(park, horizon)
    )
    problem = untimed(problem)
    fast = solve(problem, exact(Backend.HIGHS))
    model = solve(problem, exact(Backend.PYOMO))
    assert fast.objective is not None
    assert model.objective is not None
    assert fast.objective == pytest.approx(model.objective, rel=1e-7)


def synthetic(n: int, seed: int, park_limit_scale: float | None = None) -> DispatchProblem:
    park = scenario(n, seed=seed)
    horizon = day_horizon(park)
    problem = build_problem(
        park, horizon, synthetic_prices(horizon, seed=seed), forecast_park(park, horizon)
    )
    problem = untimed(problem)
    if park_limit_scale is not None:
        problem = replace(
            problem, park_import_limit_kw=problem.park_import_limit_kw * park_limit_scale
        )
    return problem


def test_decomposition_is_exact_when_the_park_limit_does_not_bind() -> None:
    problem = synthetic(150, seed=2, park_limit_scale=10.0)
    whole = solve(problem, exact(Backend.HIGHS))
    parts = solve(problem, replace(exact(Backend.HIGHS, Method.DECOMPOSED), chunk_assets=50))
    assert parts.stats.subproblems == 3
    assert parts.status is Status.OPTIMAL
    assert whole.objective is not None
    assert parts.objective is not None
    assert parts.objective == pytest.approx(whole.objective, rel=1e-7)
    assert parts.stats.lower_bound == pytest.approx(parts.objective)


def test_decomposition_when_the_park_limit_binds_is_feasible_close_and_bounded() -> None:
    problem = synthetic(150, seed=2)
    whole = solve(problem, exact(Backend.HIGHS))
    parts = solve(problem, replace(exact(Backend.HIGHS, Method.DECOMPOSED), chunk_assets=50))
    assert parts.status is Status.FEASIBLE
    assert parts.schedule is not None
    assert whole.objective is not None
    assert parts.objective is not None
    assert parts.schedule.park_kw.max() <= problem.park_import_limit_kw + 1e-4
    assert whole.schedule is not None
    # The limit really binds in the optimum, so the parts had to share it.
    assert whole.schedule.park_kw.max() == pytest.approx(problem.park_import_limit_kw, rel=1e-6)
    bound = parts.stats.lower_bound
    assert bound is not None
    assert bound <= whole.objective + 1e-6 <= parts.objective + 2e-6
    assert parts.objective <= whole.objective * 1.001


def test_decomposed_schedule_rows_follow_the_problem() -> None:
    problem = synthetic(120, seed=4, park_limit_scale=10.0)
    whole = solve(problem, exact(Backend.HIGHS))
    parts = solve(problem, replace(exact(Backend.HIGHS, Method.DECOMPOSED), chunk_assets=40))
    assert whole.schedule is not None
    assert parts.schedule is not None
    assert parts.schedule.asset_ids == problem.asset_ids
    # Assets whose optimum is unique (loads at a cost, PV) agree row by row.
    np.testing.assert_allclose(
        parts.schedule.park_kw.sum(), whole.schedule.park_kw.sum(), rtol=1e-3
    )
    assert set(parts.schedule.soc_kwh) == set(problem.batteries.asset_ids)


def test_a_re_solve_at_new_prices_matches_a_fresh_solve() -> None:
    from dispatch.fast import Decomposed

    problem = synthetic(150, seed=6, park_limit_scale=10.0)
    options = replace(exact(Backend.HIGHS, Method.DECOMPOSED), chunk_assets=50)
    kept = Decomposed(problem, options)
    first = kept.solve()
    assert first.status is Status.OPTIMAL
    new_prices = synthetic_prices(problem.horizon, seed=60)
    again = kept.resolve(new_prices)
    fresh = solve(problem.with_prices(new_prices), options)
    assert again.status is Status.OPTIMAL
    assert again.objective is not None
    assert fresh.objective is not None
    assert again.objective == pytest.approx(fresh.objective, rel=1e-7)
    assert again.objective != pytest.approx(first.objective, rel=1e-3)


def test_decomposed_infeasibility_names_the_enterprise_at_fault() -> None:
    from dispatch.solve import ViolationKind

    problem = synthetic(150, seed=2)
    limits = problem.enterprise_import_limit_kw.copy()
    limits[4] = 10.0  # far below its loads even fully reduced
    problem = replace(problem, enterprise_import_limit_kw=limits)
    result = solve(problem, replace(exact(Backend.HIGHS, Method.DECOMPOSED), chunk_assets=50))
    assert result.status is Status.INFEASIBLE
    assert result.schedule is None
    assert result.diagnosis is not None
    subjects = {(v.kind, v.subject) for v in result.diagnosis.hard}
    assert subjects == {(ViolationKind.ENTERPRISE_IMPORT_LIMIT, problem.enterprise_ids[4])}
