"""Dynamic asset limits: hand-computed cases per kind and invariants over random states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from vpp.assets import static_limits
from vpp.config.schema import AnyAsset, Asset, Location, PvAsset
from vpp.domain import Measurement
from vpp.limits import Blocked, LimitModel, PvAvailability, Snapshot, asset_limits
from vpp.solar import pv_available_kw

TZ = ZoneInfo("Asia/Shanghai")
# Wednesday 2024-01-03 10:30 in Shanghai.
WEDNESDAY_1030 = datetime(2024, 1, 3, 2, 30, tzinfo=UTC)
WEDNESDAY_2300 = datetime(2024, 1, 3, 15, 0, tzinfo=UTC)
_ASSET = TypeAdapter[AnyAsset](Asset)

PROFILE = [400.0] * 8 + [900.0] * 10 + [500.0] * 6


def make(spec: dict[str, Any]) -> AnyAsset:
    return _ASSET.validate_python(spec)


BATTERY = make({"id": "bat", "kind": "battery", "power_kw": 500, "capacity_kwh": 1000})


def reading(power_kw: float, **extra: Any) -> Measurement:
    return Measurement("x", WEDNESDAY_1030, power_kw, **extra)


def limits_of(
    asset: AnyAsset,
    m: Measurement | None,
    *,
    now: datetime = WEDNESDAY_1030,
    horizon_s: float = 10.0,
    period_s: float = 2.0,
    notice_min: float | None = None,
) -> tuple[float, float, Blocked]:
    lim, blocked = asset_limits(
        asset, m, now, TZ, horizon_s=horizon_s, period_s=period_s, notice_min=notice_min
    )
    return lim.min_kw, lim.max_kw, blocked


def test_battery_soc_headroom_over_the_horizon() -> None:
    # 400 kWh to soc_max: at most 400 / 0.95 kW of charge over one hour; 400 * 0.95 out.
    low, high, blocked = limits_of(BATTERY, reading(0.0, soc_fraction=0.5), horizon_s=3600)
    assert blocked is Blocked.NO
    assert high == pytest.approx(400 / 0.95)
    assert low == pytest.approx(-380.0)
    # Over ten seconds the SoC does not bind: the nameplate does.
    assert limits_of(BATTERY, reading(0.0, soc_fraction=0.5))[:2] == (-500.0, 500.0)


def test_full_battery_may_only_discharge() -> None:
    low, high, _ = limits_of(BATTERY, reading(0.0, soc_fraction=0.9))
    assert (low, high) == (-500.0, 0.0)
    low, high, _ = limits_of(BATTERY, reading(-20.0, soc_fraction=0.05))
    assert (low, high) == (0.0, 500.0)


def test_ramp_limits_the_next_period() -> None:
    battery = make(
        {"id": "b", "kind": "battery", "power_kw": 500, "capacity_kwh": 1000, "ramp_kw_per_s": 10}
    )
    assert limits_of(battery, reading(100.0, soc_fraction=0.5))[:2] == (80.0, 120.0)


def test_ramp_yields_to_the_soc_bound() -> None:
    battery = make(
        {"id": "b", "kind": "battery", "power_kw": 500, "capacity_kwh": 1000, "ramp_kw_per_s": 1}
    )
    # Full battery charging at 100 kW: the SoC bound (<= 0) wins over the ramp (>= 98).
    assert limits_of(battery, reading(100.0, soc_fraction=0.9))[:2] == (0.0, 0.0)


def test_pv_curtails_between_its_output_and_zero() -> None:
    pv = make({"id": "pv", "kind": "pv", "capacity_kwp": 800})
    assert limits_of(pv, reading(-300.0))[:2] == (-300.0, 0.0)
    fixed = make({"id": "pv2", "kind": "pv", "capacity_kwp": 800, "curtailable": False})
    assert limits_of(fixed, reading(-300.0)) == (-300.0, -300.0, Blocked.NOT_CONTROLLABLE)


def test_curtailable_load_between_baseline_and_enrolled_reduction() -> None:
    load = make(
        {
            "id": "load",
            "kind": "curtailable_load",
            "profile": {"weekday_kw": PROFILE},
            "max_reduction_kw": 300,
        }
    )
    # 10:30 on a weekday: the profile says 900 kW.
    assert limits_of(load, reading(880.0))[:2] == (600.0, 900.0)
    # 23:00: profile 500 kW.
    assert limits_of(load, reading(500.0), now=WEDNESDAY_2300)[:2] == (200.0, 500.0)


def test_thermal_band_over_the_horizon() -> None:
    cold = make(
        {
            "id": "cold",
            "kind": "thermal_load",
            "rated_power_kw": 150,
            "cop": 2.5,
            "thermal_capacity_kwh_per_k": 10,
            "loss_kw_per_k": 4,
            "temp_min_c": -22,
            "temp_max_c": -16,
            "ambient_c": 25,
        }
    )
    # At -16.5 °C heat flows in at 4 * 41.5 = 166 kW; over an hour the room may warm by
    # 0.5 K (5 kWh) and cool by 5.5 K (55 kWh): (166 - 5) / 2.5 <= P <= (166 + 55) / 2.5.
    low, high, _ = limits_of(cold, reading(70.0, temperature_c=-16.5), horizon_s=3600)
    assert low == pytest.approx(64.4)
    assert high == pytest.approx(88.4)
    # Above the band the plant must run flat out.
    low, high, _ = limits_of(cold, reading(70.0, temperature_c=-10.0), horizon_s=60)
    assert (low, high) == (150.0, 150.0)


def test_heating_band_mirrors_cooling() -> None:
    heat = make(
        {
            "id": "heat",
            "kind": "thermal_load",
            "mode": "heating",
            "rated_power_kw": 100,
            "cop": 2.0,
            "thermal_capacity_kwh_per_k": 10,
            "loss_kw_per_k": 2,
            "temp_min_c": 18,
            "temp_max_c": 22,
            "ambient_c": 0,
        }
    )
    # At 21 °C the space loses 42 kW; over an hour it may cool 3 K (30 kWh) and warm 1 K.
    low, high, _ = limits_of(heat, reading(20.0, temperature_c=21.0), horizon_s=3600)
    assert low == pytest.approx((42 - 30) / 2.0)
    assert high == pytest.approx((42 + 10) / 2.0)


def test_generator_moves_within_its_running_range_only() -> None:
    gen = make(
        {
            "id": "gen",
            "kind": "generator",
            "min_kw": 100,
            "max_kw": 500,
            "fuel_cost_per_mwh": 900,
            "emission_kg_per_kwh": 0.55,
        }
    )
    assert limits_of(gen, reading(-300.0)) == (-500.0, -100.0, Blocked.NO)
    assert limits_of(gen, reading(0.0)) == (0.0, 0.0, Blocked.GENERATOR_OFF)
    ramped = make(
        {
            "id": "gen2",
            "kind": "generator",
            "min_kw": 100,
            "max_kw": 500,
            "ramp_kw_per_min": 60,
            "fuel_cost_per_mwh": 900,
            "emission_kg_per_kwh": 0.55,
        }
    )
    assert limits_of(ramped, reading(-300.0))[:2] == (-302.0, -298.0)


def test_shiftable_load_is_left_to_the_schedule() -> None:
    shift = make(
        {
            "id": "shift",
            "kind": "shiftable_load",
            "power_kw": 200,
            "energy_per_run_kwh": 400,
            "windows": ["00:00-08:00", "22:00-24:00"],
        }
    )
    assert limits_of(shift, reading(0.0)) == (0.0, 0.0, Blocked.SCHEDULED_ONLY)
    assert limits_of(shift, reading(200.0), now=WEDNESDAY_2300) == (
        200.0,
        200.0,
        Blocked.SCHEDULED_ONLY,
    )


def test_enrolled_hours_and_notice() -> None:
    spec = {"id": "b", "kind": "battery", "power_kw": 100, "capacity_kwh": 200}
    daytime = make({**spec, "terms": {"available_hours": ["08:00-18:00"], "notice_min": 30}})
    assert limits_of(daytime, reading(10.0), now=WEDNESDAY_2300) == (
        10.0,
        10.0,
        Blocked.OUTSIDE_HOURS,
    )
    assert limits_of(daytime, reading(10.0), notice_min=10)[2] is Blocked.NOTICE
    assert limits_of(daytime, reading(10.0), notice_min=60)[2] is Blocked.NO
    weekends = make({**spec, "terms": {"available_days": ["sat", "sun"]}})
    assert limits_of(weekends, reading(10.0))[2] is Blocked.OUTSIDE_HOURS


def test_no_telemetry_blocks_and_holds_zero() -> None:
    assert limits_of(BATTERY, None) == (0.0, 0.0, Blocked.NO_TELEMETRY)


def test_bad_horizon_is_refused() -> None:
    with pytest.raises(ValueError, match="horizon_s"):
        limits_of(BATTERY, reading(0.0), horizon_s=0.0)


SPECS: list[dict[str, Any]] = [
    {"id": "bat", "kind": "battery", "power_kw": 500, "capacity_kwh": 100, "ramp_kw_per_s": 5},
    {"id": "pv", "kind": "pv", "capacity_kwp": 800},
    {"id": "load", "kind": "curtailable_load", "profile": {"weekday_kw": PROFILE}, "max_reduction_kw": 300},
    {"id": "shift", "kind": "shiftable_load", "power_kw": 200, "energy_per_run_kwh": 400},
    {
        "id": "cold",
        "kind": "thermal_load",
        "rated_power_kw": 150,
        "cop": 2.5,
        "thermal_capacity_kwh_per_k": 2,
        "loss_kw_per_k": 4,
        "temp_min_c": -22,
        "temp_max_c": -16,
        "ambient_c": 25,
    },
    {"id": "ev", "kind": "ev_charging", "chargers": 4, "charger_power_kw": 60, "v2g": True,
     "sessions": [{"arrival": "08:00", "departure": "17:00", "energy_kwh": 100}]},
    {"id": "gen", "kind": "generator", "min_kw": 100, "max_kw": 500, "ramp_kw_per_min": 120,
     "fuel_cost_per_mwh": 900, "emission_kg_per_kwh": 0.55},
]  # fmt: skip
MODEL = LimitModel([make(s) for s in SPECS], TZ)
N = len(SPECS)


@given(
    power=st.lists(st.floats(-800, 800), min_size=N, max_size=N),
    soc=st.floats(0, 1),
    temp=st.floats(-60, 80),
    fresh=st.lists(st.booleans(), min_size=N, max_size=N),
    horizon_s=st.floats(0.5, 7200),
    period_s=st.floats(0.1, 300),
    minute=st.integers(0, 7 * 1440 - 1),
)
@settings(max_examples=300, deadline=None)
def test_limits_never_leave_the_static_range_and_are_ordered(
    power: list[float],
    soc: float,
    temp: float,
    fresh: list[bool],
    horizon_s: float,
    period_s: float,
    minute: int,
) -> None:
    snap = Snapshot.empty(N)
    snap.power_kw[:] = power
    snap.soc_fraction[0] = soc
    snap.temperature_c[4] = temp
    snap.fresh[:] = fresh
    now = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)
    limits = MODEL.compute(snap, now, horizon_s=horizon_s, period_s=period_s)
    assert np.all(limits.lower_kw <= limits.upper_kw)
    for i, spec in enumerate(SPECS):
        static = static_limits(make(spec))
        assert static.contains(float(limits.lower_kw[i]))
        assert static.contains(float(limits.upper_kw[i]))
    # Assets without fresh telemetry are never controllable.
    assert not np.any(limits.controllable & ~np.asarray(fresh))


# --- PV availability while capped ---------------------------------------------------------------

PV_ROOF = make(
    {"id": "pv", "kind": "pv", "capacity_kwp": 1000, "inverter_kw": 900, "tilt_deg": 20,
     "azimuth_deg": 160}
)  # fmt: skip
SITE = Location(latitude_deg=31.23, longitude_deg=121.47, altitude_m=10)
# Wednesday 2024-06-05 09:00 in Shanghai.
JUNE_0900 = datetime(2024, 6, 5, 1, 0, tzinfo=UTC)


def _pv_state(power_kw: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([power_kw, 0.0]), np.array([True, True])


def test_pv_availability_is_the_clear_sky_output_until_something_is_learnt() -> None:
    estimate = PvAvailability([PV_ROOF, BATTERY], SITE)
    for hour in (0, 1, 2):
        now = JUNE_0900 + timedelta(hours=hour)
        assert isinstance(PV_ROOF, PvAsset)
        expected = pv_available_kw(PV_ROOF, SITE, [now])[0]
        assert estimate.clear_sky_kw(now)[0] == pytest.approx(expected, rel=1e-9)
        assert estimate.clear_sky_kw(now)[1] == 0.0
        power, fresh = _pv_state(0.0)  # capped at zero: the output says nothing
        result = estimate.update(now, power, fresh, np.array([False, True]))
        assert result[0] == pytest.approx(expected, rel=1e-9)
        assert np.isnan(result[1])
    night = JUNE_0900 + timedelta(hours=13)
    power, fresh = _pv_state(0.0)
    assert estimate.update(night, power, fresh, np.array([True, True]))[0] == 0.0


def test_pv_availability_learns_a_ratio_when_uncapped_and_follows_the_sun_when_capped() -> None:
    estimate = PvAvailability([PV_ROOF], SITE, relax_s=3600.0)
    clear_0900 = estimate.clear_sky_kw(JUNE_0900)[0]
    uncapped, capped = np.array([True]), np.array([False])
    fresh = np.array([True])
    # A cloudy morning: 60 % of clear sky, uncapped: the estimate is the output itself.
    seen = estimate.update(JUNE_0900, np.array([-0.6 * clear_0900]), fresh, uncapped)
    assert seen[0] == pytest.approx(0.6 * clear_0900)
    assert estimate.ratio[0] == pytest.approx(0.6)
    # Capped at zero one hour later: 60 % of the clear sky of 10:00, relaxed toward clear sky
    # by 1 - e^-1 of the gap (one time constant).
    ten = JUNE_0900 + timedelta(hours=1)
    clear_1000 = estimate.clear_sky_kw(ten)[0]
    assert clear_1000 > clear_0900
    ratio = 1.0 - 0.4 * np.exp(-1.0)
    result = estimate.update(ten, np.array([0.0]), fresh, capped)
    assert result[0] == pytest.approx(ratio * clear_1000, rel=1e-9)
    # A capped array gives at least what it shows.
    eleven = JUNE_0900 + timedelta(hours=2)
    clear_1100 = estimate.clear_sky_kw(eleven)[0]
    shown = min(0.99 * clear_1100, 899.0)
    result = estimate.update(eleven, np.array([-shown]), fresh, capped)
    assert result[0] >= shown
    assert result[0] <= 900.0  # never beyond the inverter


def test_pv_availability_checks_its_options() -> None:
    with pytest.raises(ValueError, match="relax_s"):
        PvAvailability([PV_ROOF], SITE, relax_s=0)
