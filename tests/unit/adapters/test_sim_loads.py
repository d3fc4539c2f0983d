"""Simulated loads: curtailable process loads, shiftable batches, thermal stores, EV depots."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sim import (
    CurtailableLoadModel,
    EvDepotModel,
    ShiftableLoadModel,
    SimModel,
    SimOptions,
    Site,
    ThermalLoadModel,
)
from vpp.config.schema import (
    CurtailableLoad,
    EvCharging,
    Location,
    ShiftableLoad,
    SimConnection,
    ThermalLoad,
)
from vpp.domain import Setpoint

TZ_OFFSET = timedelta(hours=8)  # Asia/Shanghai, no daylight saving


def site() -> Site:
    return Site(Location(latitude_deg=31.23, longitude_deg=121.47), "Asia/Shanghai")


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """A Shanghai wall-clock time in the week of Monday 2025-06-02, as UTC."""
    return datetime(2025, 6, day, hour, minute, tzinfo=UTC) - TZ_OFFSET


def options(lag_s: float = 0.0, **fields: object) -> SimOptions:
    return SimOptions(
        connection=SimConnection.model_validate({"response_lag_s": lag_s, **fields}), seed=1
    )


def command(asset_id: str, power_kw: float, at: datetime, valid_s: float = 86400.0) -> Setpoint:
    return Setpoint(asset_id, power_kw, at, at + timedelta(seconds=valid_s), f"c-{at:%d%H%M%S}")


def run(model: SimModel, start: datetime, seconds: float, dt: float) -> list[float]:
    """Step from `start` for `seconds`; the powers after each step."""
    powers = []
    steps = round(seconds / dt)
    for k in range(1, steps + 1):
        model.step(start + timedelta(seconds=k * dt), dt)
        powers.append(model.power_kw)
    return powers


# --- curtailable load -------------------------------------------------------------------------


def curtailable(**fields: object) -> CurtailableLoad:
    data = {
        "id": "load",
        "kind": "curtailable_load",
        # 400 kW all day but 600 kW at 03:00: a peak of 600 leaves room for rebounds
        "profile": {"weekday_kw": [400.0] * 3 + [600.0] + [400.0] * 20, "noise_fraction": 0.0},
        "max_reduction_kw": 300,
        "max_duration_min": 30,
        "rebound_fraction": 0.5,
        "rebound_window_min": 60,
        **fields,
    }
    return CurtailableLoad.model_validate(data)


def test_curtailable_reduction_is_limited_and_cannot_raise_load() -> None:
    model = CurtailableLoadModel(curtailable(), site(), options())
    start = local(2, 10)
    assert run(model, start, 60, 10) == [400.0] * 6
    model.apply(command("load", 50.0, start))
    assert run(model, start + timedelta(seconds=60), 60, 10)[-1] == pytest.approx(100.0)
    model.apply(command("load", 600.0, start))
    # back to the local load, plus the rebound of the 5 kWh curtailed: 2.5 kWh over one hour
    assert run(model, start + timedelta(seconds=120), 60, 10)[-1] == pytest.approx(402.5)


def test_curtailment_is_force_released_with_rebound() -> None:
    model = CurtailableLoadModel(curtailable(), site(), options())
    start = local(2, 10)
    model.step(start, 10)
    model.apply(command("load", 200.0, start))
    powers = run(model, start, 3600, 10)
    # 30 min curtailed to 200 kW, then forced back
    assert powers[:180] == pytest.approx([200.0] * 180)
    assert model.forced_releases == 1
    # rebound: half of the 100 kWh curtailed, over 60 min = 50 kW on top of the 400 kW load,
    # and no new reduction during that window although the setpoint still asks for one
    powers += run(model, start + timedelta(hours=1), 3600, 10)
    rebound = np.array(powers[180:540]) - 400.0
    assert rebound == pytest.approx([50.0] * 360)
    # after the rest the still-valid setpoint curtails again
    assert powers[540] == pytest.approx(200.0)
    assert model.events == 2


def test_curtailment_released_by_expiry_rebounds_and_may_resume() -> None:
    model = CurtailableLoadModel(curtailable(max_duration_min=120), site(), options())
    start = local(2, 14)
    model.step(start, 10)
    model.apply(command("load", 100.0, start, valid_s=600))  # 10 min at -300 kW = 50 kWh
    powers = run(model, start, 1800, 10)
    # the step ending at 600 s finds the setpoint expired: 59 steps curtailed by 300 kW
    assert powers[:59] == pytest.approx([100.0] * 59)
    assert powers[59] == pytest.approx(400.0)
    assert model.forced_releases == 0
    # rebound from the next step: half of 300 kW × 590 s, spread over one hour
    rebound_kw = 0.5 * 300 * 590 / 3600
    assert powers[60:] == pytest.approx([400.0 + rebound_kw] * (180 - 60))
    later = start + timedelta(seconds=1800)
    model.apply(command("load", 200.0, later))  # no min rest: may curtail again at once
    assert run(model, later, 20, 10)[-1] == pytest.approx(200.0)


def test_curtailable_min_rest_blocks_new_reduction() -> None:
    model = CurtailableLoadModel(
        curtailable(min_rest_min=20, rebound_fraction=0), site(), options()
    )
    start = local(2, 9)
    model.step(start, 10)
    model.apply(command("load", 100.0, start, valid_s=300))
    run(model, start, 600, 10)
    again = start + timedelta(seconds=600)
    model.apply(command("load", 100.0, again))
    powers = run(model, again, 1200, 10)
    # rest from 300 s to 1500 s: refused until then, granted after
    assert powers[:85] == pytest.approx([400.0] * 85)
    assert powers[-1] == pytest.approx(100.0)


def test_curtailable_rebound_at_peak_hour_is_stretched_not_lost() -> None:
    profile = {"weekday_kw": [400.0] * 10 + [480.0] * 14, "noise_fraction": 0.0}
    asset = curtailable(profile=profile, rebound_fraction=1.0, rebound_window_min=30)
    model = CurtailableLoadModel(asset, site(), options())
    start = local(2, 9, 40)
    model.step(start, 10)
    model.apply(command("load", 100.0, start, valid_s=600))  # 590 s at 300 kW below the load
    owed = 300 * 590 / 3600
    powers = run(model, start, 3 * 3600, 10)
    # the 98.3 kW rebound rate is held to the 80 kW of headroom until 10:00, then the load
    # runs at its 480 kW peak: the rest stays owed, and the load never exceeds its peak
    assert powers[60:120] == pytest.approx([480.0] * 60)
    assert model.rebound_owed_kwh == pytest.approx(owed - 80 * 600 / 3600)
    powers += run(model, start + timedelta(hours=3), 12 * 3600 + 20 * 60, 10)  # to 01:00
    assert max(powers) == pytest.approx(480.0)
    assert model.rebound_owed_kwh == 0.0
    # with a rebound fraction of 1 every kWh curtailed comes back: the meter shows the profile
    profile_kwh = 400 * 10 / 3600 + 400 * 20 / 60 + 480 * 14 + 400 * 1  # from 09:39:50
    assert model.imported_kwh == pytest.approx(profile_kwh, rel=1e-9)


def test_curtailable_follows_weekday_and_weekend_profiles_with_correlated_noise() -> None:
    profile = {
        "weekday_kw": [100.0] * 8 + [500.0] * 10 + [100.0] * 6,
        "weekend_kw": [50.0] * 24,
        "noise_fraction": 0.05,
    }
    asset = curtailable(profile=profile, max_reduction_kw=40)
    model = CurtailableLoadModel(asset, site(), options())
    monday = run(model, local(2, 0), 86400, 60)
    saturday = run(model, local(7, 0), 86400, 60)
    assert np.mean(monday[9 * 60 : 17 * 60]) == pytest.approx(500.0, rel=0.05)
    assert np.mean(monday[: 7 * 60]) == pytest.approx(100.0, rel=0.05)
    assert np.mean(saturday) == pytest.approx(50.0, rel=0.05)
    noise = np.array(monday[9 * 60 : 17 * 60]) / 500.0 - 1.0
    assert 0.01 < noise.std() < 0.1
    centred = noise - noise.mean()
    assert float((centred[1:] * centred[:-1]).sum() / (centred * centred).sum()) > 0.8


# --- shiftable load ---------------------------------------------------------------------------


def shiftable(**fields: object) -> ShiftableLoad:
    data = {
        "id": "batch",
        "kind": "shiftable_load",
        "power_kw": 200,
        "energy_per_run_kwh": 400,
        "windows": ["00:00-08:00", "22:00-24:00"],
        **fields,
    }
    return ShiftableLoad.model_validate(data)


def test_shiftable_local_control_runs_at_window_start() -> None:
    model = ShiftableLoadModel(shiftable(), site(), options())
    start = local(2, 12)
    powers = run(model, start, 20 * 3600, 60)  # 12:00 to 08:00 next day
    minute = [start + timedelta(minutes=k + 1) for k in range(len(powers))]
    on = [m for m, p in zip(minute, powers, strict=True) if p > 0]
    assert on[0] == local(2, 22, 1)  # the step from 22:00 to 22:01 is the first one running
    assert on[-1] == local(3, 0, 0)
    assert len(on) == 120
    assert sum(powers) / 60 == pytest.approx(400.0)
    assert model.runs_completed == 1
    assert model.missed_kwh == 0.0


def test_shiftable_deferred_until_it_must_run() -> None:
    model = ShiftableLoadModel(shiftable(), site(), options())
    start = local(2, 12)
    run(model, start, 9 * 3600, 60)  # 12:00 to 21:00
    start = local(2, 21)
    model.apply(command("batch", 0.0, start, valid_s=12 * 3600))
    powers = run(model, start, 11 * 3600, 60)  # 21:00 to 08:00
    first_on = next(k for k, p in enumerate(powers) if p > 0)
    started = start + timedelta(minutes=first_on + 1)
    # 120 min of run must end by 08:00: local control forces it on just before 06:00
    assert local(3, 5, 55) <= started <= local(3, 6, 0)
    assert sum(powers) / 60 == pytest.approx(400.0)
    assert model.missed_kwh == 0.0


def test_shiftable_starts_on_command_and_not_outside_windows() -> None:
    model = ShiftableLoadModel(shiftable(default_start="03:00"), site(), options())
    start = local(2, 21)
    model.apply(command("batch", 150.0, start))
    powers = run(model, start, 3600, 60)  # 21:00-22:00: outside the windows
    assert max(powers) == 0.0
    powers = run(model, local(2, 22), 3600, 60)
    assert powers == pytest.approx([200.0] * 60)  # any positive request runs at power_kw
    # without a command local control waits for 03:00
    idle = ShiftableLoadModel(shiftable(default_start="03:00"), site(), options())
    quiet = run(idle, local(2, 22), 5 * 3600, 60)
    assert max(quiet) == 0.0
    assert run(idle, local(3, 3), 120, 60)[-1] == 200.0


def test_shiftable_interruptible_pauses_and_resumes() -> None:
    model = ShiftableLoadModel(shiftable(interruptible=True), site(), options())
    start = local(2, 22)
    powers = run(model, start, 1800, 60)
    assert powers[-1] == 200.0
    pause = start + timedelta(seconds=1800)
    model.apply(command("batch", 0.0, pause, valid_s=1800))
    paused = run(model, pause, 1800, 60)
    assert max(paused[:-1]) == 0.0  # the step ending at 1800 s finds the setpoint expired
    assert paused[-1] == 200.0  # local control resumes the run
    resumed = run(model, pause + timedelta(seconds=1800), 3 * 3600, 60)
    assert (sum(powers) + sum(paused) + sum(resumed)) / 60 == pytest.approx(400.0)
    assert model.runs_completed == 1


def test_shiftable_uninterruptible_run_ignores_a_stop() -> None:
    model = ShiftableLoadModel(shiftable(interruptible=False), site(), options())
    start = local(2, 22)
    run(model, start, 1800, 60)
    stop = start + timedelta(seconds=1800)
    model.apply(command("batch", 0.0, stop))
    powers = run(model, stop, 3 * 3600, 60)
    assert powers[:90] == [200.0] * 90
    assert max(powers[90:]) == 0.0
    assert model.runs_completed == 1


def test_shiftable_several_runs_a_day() -> None:
    asset = shiftable(energy_per_run_kwh=100, runs_per_day=3, windows=["08:00-18:00"])
    model = ShiftableLoadModel(asset, site(), options())
    powers = run(model, local(2, 0), 2 * 86400, 60)
    assert sum(powers) / 60 == pytest.approx(600.0)
    assert model.runs_completed == 6
    assert model.missed_kwh == 0.0


# --- thermal load -----------------------------------------------------------------------------


def cold_store(**fields: object) -> ThermalLoad:
    data = {
        "id": "cold",
        "kind": "thermal_load",
        "rated_power_kw": 150,
        "cop": 2.5,
        "thermal_capacity_kwh_per_k": 200,
        "loss_kw_per_k": 4,
        "temp_min_c": -22,
        "temp_max_c": -16,
        "ambient_c": 25,
        **fields,
    }
    return ThermalLoad.model_validate(data)


def test_thermal_local_control_cycles_inside_the_band() -> None:
    model = ThermalLoadModel(cold_store(), site(), options())
    temperatures = []
    powers = []
    now = local(2, 0)
    for _ in range(2 * 8640):
        now += timedelta(seconds=10)
        model.step(now, 10)
        temperatures.append(model.temperature_c)
        powers.append(model.power_kw)
    assert min(temperatures) >= -22.0 and max(temperatures) <= -16.0
    assert set(powers) == {0.0, 150.0}  # on/off thermostat
    # the average power holds the losses: 4 kW/K × (25 - (-19)) K / COP 2.5 = 70.4 kW
    assert np.mean(powers) == pytest.approx(70.4, rel=0.05)
    assert max(temperatures) - min(temperatures) == pytest.approx(0.6 * 6, abs=0.3)


def test_thermal_follows_the_exact_first_order_solution() -> None:
    asset = cold_store(temp_initial_c=-21)
    model = ThermalLoadModel(asset, site(), options())
    model.apply(command("cold", 0.0, local(2, 0)))
    run(model, local(2, 0), 3600, 10)
    tau_h = 200 / 4
    expected = 25 + (-21 - 25) * math.exp(-1 / tau_h)
    assert model.temperature_c == pytest.approx(expected, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.one_of(st.sampled_from([0.0, 150.0, -50.0, 1e6]), st.floats(0, 150)),
            st.sampled_from([2.0, 10.0, 60.0, 600.0, 3600.0]),
        ),
        min_size=1,
        max_size=40,
    ),
    mode=st.sampled_from(["cooling", "heating"]),
    lag_s=st.sampled_from([0.0, 30.0]),
)
def test_thermal_stays_in_band_under_adversarial_setpoints(
    requests: list[tuple[float, float]], mode: str, lag_s: float
) -> None:
    if mode == "cooling":
        asset = cold_store()
    else:
        asset = cold_store(
            mode="heating", temp_min_c=18, temp_max_c=22, ambient_c=0, rated_power_kw=100
        )
    model = ThermalLoadModel(asset, site(), options(lag_s))
    now = local(2, 0)
    for power, dt in requests:
        model.apply(command("cold", power, now))
        now += timedelta(seconds=dt)
        model.step(now, dt)
        assert asset.temp_min_c - 1e-9 <= model.temperature_c <= asset.temp_max_c + 1e-9
        assert 0.0 <= model.power_kw <= asset.rated_power_kw


def test_thermal_override_at_band_edges() -> None:
    model = ThermalLoadModel(cold_store(), site(), options())
    start = local(2, 0)
    model.apply(command("cold", 0.0, start))
    powers = run(model, start, 6 * 3600, 10)
    assert model.temperature_c == pytest.approx(-16.0, abs=0.01)  # held at the warm edge
    assert powers[-1] == pytest.approx(4 * 41 / 2.5, rel=0.01)  # losses at -16 °C
    model.apply(command("cold", 150.0, start))
    run(model, start + timedelta(hours=6), 12 * 3600, 10)
    assert model.temperature_c == pytest.approx(-22.0, abs=0.01)  # held at the cold edge
    assert model.measure(start).temperature_c == model.temperature_c


# --- EV depot ---------------------------------------------------------------------------------


def depot(**fields: object) -> EvCharging:
    data = {"id": "ev", "kind": "ev_charging", "chargers": 10, "charger_power_kw": 60, **fields}
    return EvCharging.model_validate(data)


def test_ev_sessions_get_their_energy_by_departure_when_uncapped() -> None:
    sessions = [
        {"arrival": "08:00", "departure": "17:00", "energy_kwh": 300},
        {"arrival": "09:30", "departure": "12:00", "energy_kwh": 140},
        {"arrival": "18:00", "departure": "06:00", "energy_kwh": 400},  # overnight
    ]
    model = EvDepotModel(depot(sessions=sessions), site(), options())
    run(model, local(2, 12), 43 * 3600, 60)
    # Monday noon to Wednesday 07:00: Monday's and Tuesday's overnight sessions, Tuesday's two
    # day sessions, and Monday's day session, under way at the start: plugged in then (read at
    # 12:00:30, the middle of the first step) needing the share of 300 kWh left for its dwell
    assert model.departed == 5
    assert model.unmet_kwh == pytest.approx(0.0, abs=1e-6)
    monday = 300 * (5 * 3600 - 30) / (9 * 3600)
    assert model.energy_kwh == pytest.approx(monday + 400 + 300 + 140 + 400)
    assert model.vehicles == []


def test_ev_session_larger_than_one_charger_is_a_group_of_vehicles() -> None:
    # 2400 kWh in 8.5 h at 150 kW per charger: two vehicles of 1200 kWh
    sessions = [{"arrival": "21:00", "departure": "05:30", "energy_kwh": 2400}]
    model = EvDepotModel(depot(sessions=sessions, charger_power_kw=150), site(), options())
    run(model, local(2, 20), 60, 60)
    assert model.vehicles == []
    run(model, local(2, 21), 120, 60)
    assert [v.need_kwh for v in model.vehicles] == [1200.0, 1200.0]
    assert model.power_kw == pytest.approx(300.0)
    run(model, local(2, 21, 2), 9 * 3600, 60)
    assert model.unmet_kwh == pytest.approx(0.0, abs=1e-6)
    assert model.energy_kwh == pytest.approx(2400.0)


def test_ev_station_limit_is_shared_equally() -> None:
    sessions = [
        {"arrival": "08:00", "departure": "17:00", "energy_kwh": 300},
        {"arrival": "09:30", "departure": "12:00", "energy_kwh": 140},
    ]
    model = EvDepotModel(depot(sessions=sessions, station_limit_kw=100), site(), options())
    powers = run(model, local(2, 8), 3 * 3600, 60)
    assert max(powers) == pytest.approx(100.0)
    first, second = model.vehicles
    # 90 min alone at 60 kW, then 90 min at 50 kW each
    assert first.delivered_kwh == pytest.approx(90 + 75)
    assert second.delivered_kwh == pytest.approx(75)


def test_ev_setpoint_caps_the_station_and_shares_it() -> None:
    sessions = [{"arrival": "08:00", "departure": "20:00", "energy_kwh": 300}] * 3
    model = EvDepotModel(depot(sessions=sessions), site(), options())
    start = local(2, 8)
    run(model, start, 120, 60)
    assert model.power_kw == pytest.approx(180.0)  # 3 vehicles at 60 kW
    model.apply(command("ev", 90.0, start))
    run(model, start + timedelta(minutes=2), 600, 60)
    assert model.power_kw == pytest.approx(90.0)
    delivered = sorted(v.delivered_kwh for v in model.vehicles)
    assert delivered[0] == pytest.approx(delivered[-1])  # equal shares
    fraction = model.measure(start).soc_fraction
    assert fraction == pytest.approx(sum(delivered) / 900)


def test_ev_water_filling_gives_leftovers_to_others() -> None:
    sessions = [
        {"arrival": "08:00", "departure": "20:00", "energy_kwh": 0.5},  # 30 kW for a minute
        {"arrival": "08:00", "departure": "20:00", "energy_kwh": 300},
    ]
    model = EvDepotModel(depot(sessions=sessions), site(), options())
    start = local(2, 8)
    model.apply(command("ev", 80.0, start))
    run(model, start, 60, 60)
    small, large = model.vehicles
    assert small.delivered_kwh == pytest.approx(0.5)  # its whole need: 30 kW for a minute
    assert large.delivered_kwh == pytest.approx(50.0 / 60)  # the other 50 of the 80 kW


def test_ev_arrival_profile_is_seeded_poisson() -> None:
    profile = {"arrivals_per_hour": [3.0] * 24, "mean_energy_kwh": 30, "mean_dwell_h": 2}

    def day(seed: int) -> EvDepotModel:
        model = EvDepotModel(
            depot(arrival_profile=profile, chargers=50), site(), SimOptions(seed=seed)
        )
        run(model, local(2, 0), 86400, 30)
        return model

    first = day(1)
    assert 72 - 4 * math.sqrt(72) < first.arrived < 72 + 4 * math.sqrt(72)
    assert first.turned_away == 0
    assert first.energy_kwh == day(1).energy_kwh
    assert first.arrived != day(2).arrived or first.energy_kwh != day(2).energy_kwh
    # 2 h dwell at 60 kW is enough for 15-45 kWh: everyone leaves full
    assert first.unmet_kwh == pytest.approx(0.0, abs=1e-6)


def test_ev_depot_turns_vehicles_away_when_full() -> None:
    profile = {"arrivals_per_hour": [4.0] * 24, "mean_energy_kwh": 30, "mean_dwell_h": 10}
    model = EvDepotModel(depot(arrival_profile=profile, chargers=2), site(), SimOptions(seed=4))
    run(model, local(2, 0), 6 * 3600, 60)
    assert len(model.vehicles) <= 2
    assert model.turned_away > 0


def test_ev_v2g_discharges_only_what_it_received() -> None:
    sessions = [{"arrival": "08:00", "departure": "20:00", "energy_kwh": 100}]
    model = EvDepotModel(depot(sessions=sessions, v2g=True), site(), options())
    start = local(2, 8)
    run(model, start, 600, 60)  # 10 kWh in
    assert model.vehicles[0].delivered_kwh == pytest.approx(10.0)
    model.apply(command("ev", -100.0, start))
    powers = run(model, start + timedelta(minutes=10), 1800, 60)
    assert powers[0] == pytest.approx(-60.0)  # one charger
    assert model.vehicles[0].delivered_kwh == pytest.approx(0.0, abs=1e-9)
    assert min(powers) >= -60.0 - 1e-9
    assert powers[-1] == pytest.approx(0.0, abs=1e-9)
