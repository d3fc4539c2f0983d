"""Every asset model on small cases whose optimum is worked out by hand, on both back-ends."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from dispatch.problem import (
    BatteryBlock,
    CurtailableBlock,
    DispatchProblem,
    EvBlock,
    GeneratorBlock,
    PvBlock,
    ShiftableBlock,
    ThermalBlock,
    empty_problem,
)
from dispatch.series import Horizon
from dispatch.solve import (
    Backend,
    Method,
    SolveOptions,
    Status,
    Termination,
    ViolationKind,
    solve,
)
from tests.unit.dispatch.test_curtailment_runs import load

START = datetime(2025, 6, 4, tzinfo=UTC)
BACKENDS = [Backend.HIGHS, Backend.PYOMO]


def hourly(
    prices: list[float], *, import_limit_kw: float = 1e9, export_limit_kw: float = 1e9
) -> DispatchProblem:
    horizon = Horizon(START, timedelta(hours=1), len(prices))
    return empty_problem(
        horizon, prices, import_limit_kw=import_limit_kw, export_limit_kw=export_limit_kw
    )


def options(backend: Backend) -> SolveOptions:
    return SolveOptions(backend=backend, mip_gap=0.0, method=Method.MONOLITHIC, time_limit_s=30)


def battery(
    t: int,
    *,
    power_kw: float = 1000.0,
    energy_max_kwh: float = 1000.0,
    initial_kwh: float = 0.0,
    terminal_kwh: float = 0.0,
    efficiency: float = 1.0,
    wear_per_mwh: float = 0.0,
) -> BatteryBlock:
    one = np.ones(1)
    return BatteryBlock(
        asset_ids=("bat",),
        enterprise_index=np.zeros(1, np.int64),
        charge_max_kw=np.full((1, t), power_kw),
        discharge_max_kw=np.full((1, t), power_kw),
        energy_min_kwh=np.zeros(1),
        energy_max_kwh=one * energy_max_kwh,
        energy_initial_kwh=one * initial_kwh,
        energy_terminal_kwh=one * terminal_kwh,
        charge_efficiency=one * efficiency,
        discharge_efficiency=one * efficiency,
        degradation_cost_per_mwh=one * wear_per_mwh,
    )


def curtailable(
    t: int,
    *,
    baseline_kw: float = 1000.0,
    reduction_kw: float = 400.0,
    cost: float = 300.0,
    rebound: float = 0.0,
    duration: int = 96,
) -> CurtailableBlock:
    """One process load, limited in nothing but depth (and `duration`), rebound within the
    next interval."""
    return load(
        t,
        duration=duration,
        rebound=rebound,
        cost=cost,
        baseline_kw=baseline_kw,
        reduction_kw=reduction_kw,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_battery_arbitrages_a_two_price_day(backend: Backend) -> None:
    problem = replace(hourly([100.0, 500.0]), batteries=battery(2))
    result = solve(problem, options(backend))
    assert result.status is Status.OPTIMAL
    assert result.termination is Termination.OPTIMAL
    # Buy 1 MWh at 100, sell it at 500.
    assert result.objective == pytest.approx(-400.0, abs=1e-6)
    assert result.schedule is not None
    np.testing.assert_allclose(result.schedule.power_of("bat"), [1000.0, -1000.0], atol=1e-6)
    np.testing.assert_allclose(result.schedule.soc_kwh["bat"], [1000.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_battery_losses_and_wear_are_paid(backend: Backend) -> None:
    block = battery(2, efficiency=0.9, wear_per_mwh=10.0)
    result = solve(replace(hourly([100.0, 500.0]), batteries=block), options(backend))
    # 1000 kWh in stores 900 kWh, which gives back 810 kWh; wear on 1.81 MWh of throughput.
    assert result.objective == pytest.approx(100.0 - 0.81 * 500.0 + 1.81 * 10.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_battery_does_not_burn_energy_at_negative_prices(backend: Backend) -> None:
    block = battery(2, efficiency=0.9, initial_kwh=500.0, terminal_kwh=500.0)
    result = solve(replace(hourly([-500.0, -500.0]), batteries=block), options(backend))
    assert result.schedule is not None
    power = result.schedule.power_of("bat")
    # Only charging is physical: 500 kWh of room takes 500 / 0.9 kWh from the grid.
    assert power.sum() == pytest.approx(500.0 / 0.9, abs=1e-4)
    assert result.objective == pytest.approx(-500.0 * 0.5 / 0.9, abs=1e-4)
    soc = result.schedule.soc_kwh["bat"]
    assert soc[-1] == pytest.approx(1000.0, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_battery_misses_an_unreachable_terminal_energy_softly(backend: Backend) -> None:
    block = battery(2, power_kw=100.0, terminal_kwh=500.0)
    result = solve(replace(hourly([100.0, 100.0]), batteries=block), options(backend))
    assert result.status is Status.OPTIMAL
    assert result.diagnosis is not None
    (missed,) = result.diagnosis.soft
    assert missed.kind is ViolationKind.TERMINAL_ENERGY
    assert missed.subject == "bat"
    assert missed.amount == pytest.approx(300.0, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("price", "reduced"), [(400.0, 400.0), (200.0, 0.0)])
def test_curtailment_runs_when_the_price_beats_its_cost(
    backend: Backend, price: float, reduced: float
) -> None:
    problem = replace(hourly([price]), curtailable=curtailable(1))
    result = solve(problem, options(backend))
    assert result.schedule is not None
    assert result.schedule.power_of("load")[0] == pytest.approx(1000.0 - reduced, abs=1e-6)
    expected = price * (1000.0 - reduced) / 1000 + 300.0 * reduced / 1000
    assert result.objective == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_curtailment_at_exactly_its_cost_changes_nothing(backend: Backend) -> None:
    result = solve(replace(hourly([300.0]), curtailable=curtailable(1)), options(backend))
    # Reducing saves 300 per MWh and costs 300 per MWh: any plan costs 300.
    assert result.objective == pytest.approx(300.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_curtailment_rebounds_within_its_window(backend: Backend) -> None:
    block = curtailable(3, cost=150.0, rebound=0.5, duration=1)
    result = solve(replace(hourly([100.0, 900.0, 100.0]), curtailable=block), options(backend))
    assert result.schedule is not None
    # Reducing pays only in the dear hour; half of the 400 kWh comes back within the hour after.
    np.testing.assert_allclose(result.schedule.power_of("load"), [1000.0, 600.0, 1200.0], atol=1e-4)
    assert result.objective == pytest.approx(100 + 0.9 * 600 + 0.1 * 1200 + 60, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_curtailment_lasts_at_most_its_duration(backend: Backend) -> None:
    block = curtailable(3, cost=0.0, duration=2)
    result = solve(replace(hourly([900.0, 900.0, 900.0]), curtailable=block), options(backend))
    assert result.schedule is not None
    # At most two hours of full reduction in any three.
    assert result.schedule.power_of("load").sum() == pytest.approx(3000.0 - 800.0, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pv_curtails_at_negative_prices_at_its_cost(backend: Backend) -> None:
    pv = PvBlock(
        asset_ids=("pv",),
        enterprise_index=np.zeros(1, np.int64),
        generation_kw=np.array([[1000.0, 1000.0]]),
        curtailable=np.array([[True, True]]),
        curtailment_cost_per_mwh=np.array([50.0]),
    )
    result = solve(replace(hourly([-100.0, 100.0]), pv=pv), options(backend))
    assert result.schedule is not None
    np.testing.assert_allclose(result.schedule.power_of("pv"), [0.0, -1000.0], atol=1e-6)
    assert result.objective == pytest.approx(50.0 - 100.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pv_behind_a_zero_export_limit_is_curtailed(backend: Backend) -> None:
    pv = PvBlock(
        asset_ids=("pv",),
        enterprise_index=np.zeros(1, np.int64),
        generation_kw=np.array([[1000.0]]),
        curtailable=np.array([[True]]),
        curtailment_cost_per_mwh=np.array([50.0]),
    )
    problem = replace(hourly([100.0], export_limit_kw=0.0), pv=pv)
    result = solve(problem, options(backend))
    assert result.objective == pytest.approx(50.0, abs=1e-6)


def shiftable(t: int, *, interruptible: bool) -> ShiftableBlock:
    return ShiftableBlock(
        asset_ids=("batch",),
        enterprise_index=np.zeros(1, np.int64),
        power_kw=np.array([100.0]),
        allowed=np.ones((1, t), dtype=bool),
        energy_kwh=np.array([200.0]),
        interruptible=np.array([interruptible]),
        runs=np.array([1]),
        run_intervals=np.array([2]),
        run_profile_kw=(np.array([100.0, 100.0]),),
        fixed=np.array([False]),
        baseline_kw=np.zeros((1, t)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("interruptible", "expected", "power"),
    [
        (True, 0.1 * (100 + 200), [0, 100, 0, 100]),  # the two cheapest hours
        (False, 0.1 * (100 + 300), [0, 100, 100, 0]),  # the cheapest two in a row
    ],
)
def test_shiftable_load_runs_in_the_cheapest_hours(
    backend: Backend, interruptible: bool, expected: float, power: list[float]
) -> None:
    problem = replace(
        hourly([400.0, 100.0, 300.0, 200.0]), shiftable=shiftable(4, interruptible=interruptible)
    )
    result = solve(problem, options(backend))
    assert result.status is Status.OPTIMAL
    assert result.objective == pytest.approx(expected, abs=1e-6)
    assert result.schedule is not None
    np.testing.assert_allclose(result.schedule.power_of("batch"), power, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cold_store_at_a_constant_price_holds_the_warm_edge(backend: Backend) -> None:
    t = 4
    block = ThermalBlock(
        asset_ids=("cold",),
        enterprise_index=np.zeros(1, np.int64),
        power_min_kw=np.zeros((1, t)),
        power_max_kw=np.full((1, t), 100.0),
        cop=np.array([2.5]),
        heating=np.array([False]),
        capacity_kwh_per_k=np.array([200.0]),
        loss_kw_per_k=np.array([4.0]),
        gain_kw=np.array([10.0]),
        ambient_c=np.full((1, t), 25.0),
        temp_min_c=np.array([-22.0]),
        temp_max_c=np.array([-16.0]),
        temp_initial_c=np.array([-16.0]),
    )
    result = solve(replace(hourly([200.0] * t), thermal=block), options(backend))
    assert result.schedule is not None
    # Held exactly at -16 °C: heat in = 4 kW/K × 41 K + 10 kW, removed at COP 2.5.
    holding = (4.0 * 41.0 + 10.0) / 2.5
    np.testing.assert_allclose(result.schedule.power_of("cold"), holding, atol=1e-5)
    np.testing.assert_allclose(result.schedule.temperature_c["cold"], -16.0, atol=1e-6)
    assert result.objective == pytest.approx(0.2 * holding * t, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ev_session_charges_in_the_cheapest_plugged_hours(backend: Backend) -> None:
    t = 4
    high = np.zeros((1, t))
    high[0, 0:3] = 50.0
    ev = EvBlock(
        asset_ids=("depot",),
        enterprise_index=np.zeros(1, np.int64),
        station_limit_kw=np.array([1000.0]),
        session_depot=np.zeros(1, np.int64),
        session_energy_kwh=np.array([100.0]),
        session_min_kw=np.zeros((1, t)),
        session_max_kw=high,
    )
    result = solve(replace(hourly([300.0, 100.0, 200.0, 0.0]), ev=ev), options(backend))
    assert result.schedule is not None
    np.testing.assert_allclose(result.schedule.power_of("depot"), [0, 50, 50, 0], atol=1e-6)
    assert result.objective == pytest.approx(0.05 * 100 + 0.05 * 200, abs=1e-6)


def generator(t: int, *, startup: float = 0.0) -> GeneratorBlock:
    return GeneratorBlock(
        asset_ids=("gen",),
        enterprise_index=np.zeros(1, np.int64),
        min_kw=np.array([200.0]),
        max_kw=np.full((1, t), 500.0),
        ramp_kw_per_interval=np.array([np.inf]),
        cost_per_mwh=np.array([800.0]),
        startup_cost=np.array([startup]),
        emission_kg_per_kwh=np.array([0.5]),
        min_up_intervals=np.array([1]),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("startup", "expected"), [(0.0, -100.0), (150.0, 0.0)])
def test_generator_runs_when_the_spread_pays_its_start(
    backend: Backend, startup: float, expected: float
) -> None:
    problem = replace(hourly([1000.0, 700.0]), generators=generator(2, startup=startup))
    result = solve(problem, options(backend))
    assert result.objective == pytest.approx(expected, abs=1e-6)
    assert result.schedule is not None
    ran = -result.schedule.power_of("gen")
    assert ran[1] == pytest.approx(0.0, abs=1e-6)  # below its cost: off
    assert ran[0] == pytest.approx(500.0 if startup == 0 else 0.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_carbon_price_is_charged_on_generator_emissions(backend: Backend) -> None:
    problem = replace(hourly([1000.0]), generators=generator(1), carbon_price_per_t=300.0)
    result = solve(problem, options(backend))
    # 800 + 0.5 t/MWh × 300 = 950 < 1000: runs at 500 kW and earns 0.5 × 50.
    assert result.objective == pytest.approx(-25.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_enterprise_limit_caps_battery_charging(backend: Backend) -> None:
    problem = replace(hourly([100.0, 500.0], import_limit_kw=600.0), batteries=battery(2))
    result = solve(problem, options(backend))
    assert result.schedule is not None
    np.testing.assert_allclose(result.schedule.power_of("bat"), [600.0, -600.0], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_impossible_park_limit_is_diagnosed(backend: Backend) -> None:
    problem = replace(
        hourly([100.0, 100.0], import_limit_kw=2000.0),
        curtailable=curtailable(2, baseline_kw=3000.0, reduction_kw=500.0),
        park_import_limit_kw=2000.0,
    )
    result = solve(problem, options(backend))
    assert result.status is Status.INFEASIBLE
    assert result.termination is Termination.INFEASIBLE
    assert result.schedule is None
    assert result.objective is None
    assert result.diagnosis is not None
    kinds = {(v.kind, v.subject) for v in result.diagnosis.hard}
    # Even fully reduced, the load draws 2500 kW: 500 kW beyond both limits.
    assert (ViolationKind.PARK_IMPORT_LIMIT, "park") in kinds or (
        ViolationKind.ENTERPRISE_IMPORT_LIMIT,
        "enterprise",
    ) in kinds
    worst = max(v.amount for v in result.diagnosis.hard)
    assert worst == pytest.approx(500.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_impossible_enterprise_limit_names_the_enterprise(backend: Backend) -> None:
    problem = replace(
        hourly([100.0], import_limit_kw=1e6),
        curtailable=curtailable(1, baseline_kw=3000.0, reduction_kw=500.0),
        enterprise_import_limit_kw=np.array([1000.0]),
    )
    result = solve(problem, options(backend))
    assert result.status is Status.INFEASIBLE
    assert result.diagnosis is not None
    (cause,) = result.diagnosis.hard
    assert cause.kind is ViolationKind.ENTERPRISE_IMPORT_LIMIT
    assert cause.subject == "enterprise"
    assert cause.amount == pytest.approx(1500.0, abs=1e-3)
    assert "enterprise_import_limit" in str(result.diagnosis)


def test_a_target_is_followed_and_a_shortfall_reported() -> None:
    problem = replace(hourly([100.0, 100.0]), batteries=battery(2, initial_kwh=500.0))
    result = solve(problem.with_target(np.array([np.nan, 1500.0])), options(Backend.HIGHS))
    # A solver stopped early (a time limit) may still hand back a feasible, unfinished plan:
    # the status says so before the numbers are compared.
    assert result.status is Status.OPTIMAL, result.termination
    assert result.schedule is not None
    # To charge at its full 1000 kW in the second hour the battery empties in the first.
    np.testing.assert_allclose(result.schedule.park_kw, [-500.0, 1000.0], atol=1e-6)
    assert result.diagnosis is not None
    (short,) = [v for v in result.diagnosis.soft if v.kind is ViolationKind.TARGET]
    assert short.amount == pytest.approx(500.0, abs=1e-4)
    assert short.first_interval == 1


def test_a_kept_solver_gets_its_past_run_time_on_top_of_the_time_left() -> None:
    from time import perf_counter

    from dispatch import fast

    problem = replace(hourly([100.0, 300.0]), batteries=battery(2, initial_kwh=500.0))
    model = fast.Rounded(fast.build(problem), options(Backend.HIGHS))
    for _ in range(3):
        assert model.relax().termination is Termination.OPTIMAL
    past = float(model.highs.getRunTime())
    assert past > 0
    fast.set_time_limit(model.highs, perf_counter() + 5.0)
    # HiGHS compares its limit with the instance's summed run time.
    _, limit = model.highs.getOptionValue("time_limit")
    assert isinstance(limit, float)
    assert past + 4.9 <= limit <= past + 5.0 + 1e-6
