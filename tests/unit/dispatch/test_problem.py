"""Building the dispatch problem from enrollment, fleet state, forecasts and prices."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from dispatch.forecast import forecast_park
from dispatch.problem import (
    BuildOptions,
    DispatchProblem,
    ProblemError,
    build_problem,
    power_range_kw,
    select_enterprises,
)
from dispatch.series import AssetForecast, Horizon, ParkForecast
from vpp.config.loader import load_park
from vpp.config.schema import CurtailableLoad, Park
from vpp.domain import AssetKind, AssetState, Availability, Measurement

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def park() -> Park:
    return load_park(ROOT / "tests/fixtures/small_park.yaml", ROOT / "config/markets").park


def day(park: Park) -> Horizon:
    # A Wednesday, local midnight.
    return Horizon(datetime(2025, 6, 4, tzinfo=park.tz), timedelta(minutes=15), 96)


def build(park: Park, **kwargs: object) -> DispatchProblem:
    horizon = day(park)
    forecast = forecast_park(park, horizon)
    return build_problem(park, horizon, np.full(96, 300.0), forecast, **kwargs)  # type: ignore[arg-type]


def test_every_asset_lands_in_its_block_with_its_enterprise(park: Park) -> None:
    problem = build(park)
    assert set(problem.asset_ids) == {a.id for _, a in park.iter_assets()}
    assert problem.enterprise_ids == ("ent-a", "ent-b")
    kinds = dict(zip(problem.asset_ids, problem.asset_kinds, strict=True))
    assert kinds["bat-a"] is AssetKind.BATTERY
    assert kinds["cold-b"] is AssetKind.THERMAL_LOAD
    ent = dict(zip(problem.asset_ids, problem.asset_enterprise_index.tolist(), strict=True))
    assert ent["bat-a"] == 0
    assert ent["gen-b"] == 1
    assert problem.is_mip  # the generator's minimum output needs a commitment binary


def test_battery_energy_follows_enrollment_and_fleet_state(park: Park) -> None:
    problem = build(park)
    b = problem.batteries
    # 1000 kWh, SoC 0.1..0.9, starting at 0.5 by default.
    assert b.energy_min_kwh[0] == pytest.approx(100.0)
    assert b.energy_max_kwh[0] == pytest.approx(900.0)
    assert b.energy_initial_kwh[0] == pytest.approx(500.0)
    assert b.energy_terminal_kwh[0] == pytest.approx(500.0)
    measured = Measurement("bat-a", day(park).start, 0.0, soc_fraction=0.72)
    states = {
        "bat-a": AssetState("bat-a", "ent-a", AssetKind.BATTERY, Availability.AVAILABLE, measured)
    }
    later = build(park, states=states)
    assert later.batteries.energy_initial_kwh[0] == pytest.approx(720.0)


def test_offline_asset_is_pinned_to_what_it_does_alone(park: Park) -> None:
    states = {"bat-a": AssetState("bat-a", "ent-a", AssetKind.BATTERY, Availability.OFFLINE, None)}
    problem = build(park, states=states)
    assert np.all(problem.batteries.charge_max_kw == 0)
    assert np.all(problem.batteries.discharge_max_kw == 0)


def test_notice_keeps_the_first_intervals_out_of_dispatch(park: Park) -> None:
    data = park.model_dump()
    data["enterprises"][0]["assets"][2]["terms"] = {"notice_min": 30}
    noticed = Park.model_validate(data)
    horizon = day(noticed)
    problem = build_problem(
        noticed,
        horizon,
        np.full(96, 300.0),
        forecast_park(noticed, horizon),
        options=BuildOptions(now=horizon.start),
    )
    reduction = problem.curtailable.reduction_max_kw[0]
    assert np.all(reduction[:2] == 0)  # 30 min of notice: the first two quarter-hours
    assert np.all(reduction[2:] > 0)


def test_availability_hours_limit_dispatch(park: Park) -> None:
    data = park.model_dump()
    data["enterprises"][0]["assets"][0]["terms"] = {"available_hours": ["08:00-12:00"]}
    limited = Park.model_validate(data)
    problem = build(limited)
    allowed = problem.batteries.charge_max_kw[0] > 0
    assert allowed.sum() == 16
    assert allowed[32:48].all()


def test_loads_fall_back_to_their_enrolled_profile(park: Park) -> None:
    horizon = day(park)
    problem = build_problem(park, horizon, np.full(96, 300.0), forecast=_pv_only(park, horizon))
    load = park.asset("load-a")
    assert isinstance(load, CurtailableLoad)
    expected = [load.profile.at(2, 15 * k) for k in range(96)]
    np.testing.assert_allclose(problem.curtailable.baseline_kw[0], expected)
    # The EV depot falls back to its booked session: 08:00-17:00, 300 kWh.
    assert problem.ev.session_energy_kwh.tolist() == [300.0]
    plugged = problem.ev.session_max_kw[0] > 0
    assert plugged.sum() == 36
    assert plugged[32] and not plugged[31]


def _pv_only(park: Park, horizon: Horizon) -> ParkForecast:
    solar = -np.clip(np.sin(np.linspace(0, np.pi, horizon.intervals)), 0, None) * 500
    return ParkForecast(horizon, {"pv-a": AssetForecast("pv-a", solar)})


def test_pv_without_a_forecast_is_an_error(park: Park) -> None:
    horizon = day(park)
    with pytest.raises(ProblemError, match="pv-a"):
        build_problem(park, horizon, np.full(96, 300.0), forecast=None)


def test_prices_must_cover_the_horizon(park: Park) -> None:
    horizon = day(park)
    with pytest.raises(ProblemError, match="96 values"):
        build_problem(park, horizon, np.full(95, 300.0), forecast_park(park, horizon))


def test_an_enterprise_sub_problem_keeps_its_assets_only(park: Park) -> None:
    problem = build(park)
    sub = select_enterprises(problem, [1])
    assert sub.enterprise_ids == ("ent-b",)
    assert set(sub.asset_ids) == {"shift-b", "cold-b", "ev-b", "gen-b"}
    assert sub.ev.session_depot.tolist() == [0]
    assert sub.asset_enterprise_index.tolist() == [0, 0, 0, 0]


def test_power_range_spans_every_assets_limits(park: Park) -> None:
    problem = build(park)
    low, high = power_range_kw(problem)
    rows = dict(zip(problem.asset_ids, range(len(problem.asset_ids)), strict=True))
    assert low[rows["bat-a"]].min() == pytest.approx(-500.0)
    assert high[rows["bat-a"]].max() == pytest.approx(500.0)
    assert low[rows["gen-b"]].min() == pytest.approx(-500.0)
    assert np.all(low <= high)
