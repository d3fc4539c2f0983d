"""Invariants of every plan: limits never exceeded, stored energy balances the power that was
planned (so batteries never charge and discharge at once), and the same input gives the same
plan."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.problem import (
    BatteryBlock,
    CurtailableBlock,
    DispatchProblem,
    PvBlock,
    empty_problem,
    power_range_kw,
)
from dispatch.series import Horizon
from dispatch.solve import Method, SolveOptions, solve

T = 6
TOL = 1e-5
OPTIONS = SolveOptions(method=Method.MONOLITHIC, mip_gap=0.0, time_limit_s=30)

prices = st.lists(st.floats(-300, 800, allow_nan=False), min_size=T, max_size=T)


@st.composite
def problems(draw: st.DrawFn) -> DispatchProblem:
    horizon = Horizon(datetime(2025, 1, 6, tzinfo=UTC), timedelta(minutes=30), T)
    n_ent = draw(st.integers(1, 2))
    problem = empty_problem(
        horizon,
        draw(prices),
        enterprises=tuple(f"e{i}" for i in range(n_ent)),
        import_limit_kw=draw(st.floats(1500, 5000)),
        export_limit_kw=draw(st.floats(0, 3000)),
    )
    nb = draw(st.integers(1, 3))
    power = np.array(draw(st.lists(st.floats(50, 1000), min_size=nb, max_size=nb)))
    hours = np.array(draw(st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=nb, max_size=nb)))
    cap = power * hours
    soc0 = np.array(draw(st.lists(st.floats(0.1, 0.9), min_size=nb, max_size=nb)))
    eta = np.array(draw(st.lists(st.floats(0.85, 1.0), min_size=nb, max_size=nb)))
    batteries = BatteryBlock(
        asset_ids=tuple(f"b{i}" for i in range(nb)),
        enterprise_index=np.arange(nb) % n_ent,
        charge_max_kw=np.repeat(power[:, None], T, axis=1),
        discharge_max_kw=np.repeat(power[:, None], T, axis=1),
        energy_min_kwh=0.1 * cap,
        energy_max_kwh=0.9 * cap,
        energy_initial_kwh=soc0 * 0.8 * cap + 0.1 * cap,
        energy_terminal_kwh=soc0 * 0.8 * cap + 0.1 * cap,
        charge_efficiency=eta,
        discharge_efficiency=eta,
        degradation_cost_per_mwh=np.array(
            draw(st.lists(st.floats(0, 30), min_size=nb, max_size=nb))
        ),
    )
    baseline = draw(st.floats(100, 800))
    curtailable = CurtailableBlock(
        asset_ids=("load",),
        enterprise_index=np.zeros(1, np.int64),
        baseline_kw=np.full((1, T), baseline),
        reduction_max_kw=np.full((1, T), 0.3 * baseline),
        max_duration_intervals=np.array([draw(st.integers(1, 4))]),
        rest_intervals=np.array([draw(st.integers(0, 2))]),
        rebound_fraction=np.array([draw(st.sampled_from([0.0, 0.5, 1.0]))]),
        rebound_window_intervals=np.array([2]),
        rebound_max_kw=np.array([0.3 * baseline]),
        cost_per_mwh=np.array([draw(st.floats(0, 500))]),
    )
    generation = np.array(draw(st.lists(st.floats(0, 1500), min_size=T, max_size=T)))
    pv = PvBlock(
        asset_ids=("pv",),
        enterprise_index=np.zeros(1, np.int64),
        generation_kw=generation[None, :],
        curtailable=np.ones((1, T), dtype=bool),
        curtailment_cost_per_mwh=np.array([draw(st.floats(0, 100))]),
    )
    return replace(problem, batteries=batteries, curtailable=curtailable, pv=pv)


def assert_physical(problem: DispatchProblem) -> None:
    """Solve `problem`: its plan keeps every limit and its stored energy balances."""
    result = solve(problem, OPTIONS)
    assert result.ok, result.diagnosis
    schedule = result.schedule
    assert schedule is not None
    power = schedule.power_kw
    low, high = power_range_kw(problem)
    assert np.all(power >= low - TOL)
    assert np.all(power <= high + TOL)
    park = power.sum(axis=0)
    assert np.all(park <= problem.park_import_limit_kw + TOL)
    assert np.all(park >= -problem.park_export_limit_kw - TOL)
    ent = problem.asset_enterprise_index
    for e in range(len(problem.enterprise_ids)):
        net = power[ent == e].sum(axis=0)
        assert np.all(net <= problem.enterprise_import_limit_kw[e] + TOL)
        assert np.all(net >= -problem.enterprise_export_limit_kw[e] - TOL)
    b = problem.batteries
    h = problem.horizon.hours
    for i, asset in enumerate(b.asset_ids):
        soc = schedule.soc_kwh[asset]
        assert np.all(soc >= b.energy_min_kwh[i] - TOL)
        assert np.all(soc <= b.energy_max_kwh[i] + TOL)
        p = schedule.power_of(asset)
        # Physical: charge at η_c, discharge at 1/η_d, never both (which would burn energy).
        delta = np.where(p >= 0, b.charge_efficiency[i] * p, p / b.discharge_efficiency[i]) * h
        before = np.concatenate([[b.energy_initial_kwh[i]], soc[:-1]])
        np.testing.assert_allclose(soc - before, delta, atol=1e-4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_limits_hold_and_stored_energy_balances(problem: DispatchProblem) -> None:
    assert_physical(problem)


def test_burning_that_moves_from_one_free_interval_to_the_next_is_still_stopped() -> None:
    """Found by the property above: PV that may not be exported, prices of 0 and -1 and a
    battery without wear make burning energy free in several intervals, and each re-solve
    moved it to another one; the rounds once stopped before it was gone."""
    horizon = Horizon(datetime(2025, 1, 6, tzinfo=UTC), timedelta(minutes=30), T)
    problem = empty_problem(
        horizon, [0.0, 0.0, -1.0, 0.0, -1.0, 0.0], enterprises=("e0",), export_limit_kw=0.0
    )
    one = np.ones(1)
    batteries = BatteryBlock(
        asset_ids=("b0",),
        enterprise_index=np.zeros(1, np.int64),
        charge_max_kw=np.full((1, T), 50.0),
        discharge_max_kw=np.full((1, T), 50.0),
        energy_min_kwh=one * 20.0,
        energy_max_kwh=one * 180.0,
        energy_initial_kwh=one * 100.0,
        energy_terminal_kwh=one * 100.0,
        charge_efficiency=one * 0.9921875,
        discharge_efficiency=one * 0.9921875,
        degradation_cost_per_mwh=one * 0.0,
    )
    curtailable = CurtailableBlock(
        asset_ids=("load",),
        enterprise_index=np.zeros(1, np.int64),
        baseline_kw=np.full((1, T), 100.0),
        reduction_max_kw=np.full((1, T), 30.0),
        max_duration_intervals=np.array([1]),
        rest_intervals=np.array([0]),
        rebound_fraction=np.array([0.0]),
        rebound_window_intervals=np.array([2]),
        rebound_max_kw=np.array([30.0]),
        cost_per_mwh=np.array([0.0]),
    )
    pv = PvBlock(
        asset_ids=("pv",),
        enterprise_index=np.zeros(1, np.int64),
        generation_kw=np.array([[0.0, 113.0, 0.0, 150.0, 0.0, 150.0]]),
        curtailable=np.ones((1, T), dtype=bool),
        curtailment_cost_per_mwh=np.array([1.0]),
    )
    assert_physical(replace(problem, batteries=batteries, curtailable=curtailable, pv=pv))


@settings(max_examples=10, deadline=None)
@given(problems())
def test_same_input_gives_the_same_plan(problem: DispatchProblem) -> None:
    first = solve(problem, OPTIONS)
    second = solve(problem, OPTIONS)
    assert first.status is second.status
    assert first.objective == second.objective
    assert first.schedule is not None
    assert second.schedule is not None
    assert np.array_equal(first.schedule.power_kw, second.schedule.power_kw)
