"""Solar geometry and PV output against published reference values and hand-computed checks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from vpp import solar
from vpp.config.schema import Location, PvAsset

SHANGHAI = Location(latitude_deg=31.23, longitude_deg=121.47)
SYDNEY = Location(latitude_deg=-33.87, longitude_deg=151.21)


def pv(**fields: object) -> PvAsset:
    return PvAsset.model_validate({"id": "pv", "kind": "pv", "capacity_kwp": 1000, **fields})


def minutes(day: datetime, step_min: int = 1) -> list[datetime]:
    return [day + timedelta(minutes=m) for m in range(0, 24 * 60, step_min)]


def test_matches_the_spa_reference_example() -> None:
    # Reda & Andreas (2004), NREL/TP-560-34302, table A4.1: Golden, Colorado,
    # 2003-10-17 12:30:30 local (UTC-7). Reference declination -9.31434°, equation of time
    # 14.641503 min, topocentric zenith 50.11162° (with ~0.02° refraction), azimuth 194.34024°.
    moment = datetime(2003, 10, 17, 12, 30, 30, tzinfo=timezone(timedelta(hours=-7)))
    position = solar.solar_position(39.742476, -105.1786, solar.epoch_seconds([moment]))
    assert position.declination_deg[0] == pytest.approx(-9.31434, abs=0.01)
    assert position.equation_of_time_min[0] == pytest.approx(14.641503, abs=0.02)
    assert position.zenith_deg[0] == pytest.approx(50.11162 + 0.02, abs=0.03)
    assert position.azimuth_deg[0] == pytest.approx(194.34024, abs=0.02)


def spencer(moment: datetime, latitude: float, longitude: float) -> tuple[float, float, float]:
    """Declination, equation of time and zenith by Spencer (1971) — an independent formula."""
    utc = moment.astimezone(UTC)
    day_of_year = utc.timetuple().tm_yday
    hours = utc.hour + utc.minute / 60 + utc.second / 3600
    gamma = 2 * math.pi / 365 * (day_of_year - 1 + (hours - 12) / 24)
    declination = (
        0.006918
        - 0.399912 * math.cos(gamma)
        + 0.070257 * math.sin(gamma)
        - 0.006758 * math.cos(2 * gamma)
        + 0.000907 * math.sin(2 * gamma)
        - 0.002697 * math.cos(3 * gamma)
        + 0.00148 * math.sin(3 * gamma)
    )
    eot = 229.18 * (
        0.000075
        + 0.001868 * math.cos(gamma)
        - 0.032077 * math.sin(gamma)
        - 0.014615 * math.cos(2 * gamma)
        - 0.040849 * math.sin(2 * gamma)
    )
    true_solar_min = hours * 60 + eot + 4 * longitude
    hour_angle = math.radians(true_solar_min / 4 - 180)
    lat = math.radians(latitude)
    cos_zenith = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(
        declination
    ) * math.cos(hour_angle)
    return math.degrees(declination), eot, math.degrees(math.acos(cos_zenith))


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 6, 21, 4, 0, tzinfo=UTC),  # Shanghai local noon, summer solstice
        datetime(2024, 12, 21, 1, 30, tzinfo=UTC),  # winter morning
        datetime(2025, 3, 20, 7, 45, tzinfo=UTC),  # equinox afternoon
        datetime(2025, 9, 1, 23, 10, tzinfo=UTC),  # early morning, low sun
    ],
)
def test_agrees_with_spencer_formulas(moment: datetime) -> None:
    # Spencer's series was fitted to a 1950 ephemeris on a 365-day calendar: today's seasons
    # run up to a day ahead of it, about 0.4° of declination near the equinoxes. The check
    # catches gross errors (sign, units, longitude direction); the SPA test checks precision.
    declination, eot, zenith = spencer(moment, SHANGHAI.latitude_deg, SHANGHAI.longitude_deg)
    position = solar.solar_position_at(SHANGHAI, [moment])
    assert position.declination_deg[0] == pytest.approx(declination, abs=0.6)
    assert position.equation_of_time_min[0] == pytest.approx(eot, abs=1.0)
    assert position.zenith_deg[0] == pytest.approx(zenith, abs=0.6)


@pytest.mark.parametrize(
    ("location", "day"),
    [
        (SHANGHAI, datetime(2024, 6, 21, tzinfo=UTC)),
        (SHANGHAI, datetime(2024, 12, 21, tzinfo=UTC)),
        (SYDNEY, datetime(2025, 3, 5, tzinfo=UTC)),
        (Location(latitude_deg=0.0, longitude_deg=-60.0), datetime(2025, 8, 1, tzinfo=UTC)),
    ],
)
def test_solar_noon_zenith_is_latitude_minus_declination(location: Location, day: datetime) -> None:
    # sample the UTC day around local solar noon (longitude / 15 hours before 12:00 UTC)
    noon_guess = day + timedelta(hours=12 - location.longitude_deg / 15)
    times = [noon_guess + timedelta(seconds=s) for s in range(-3600, 3600, 10)]
    position = solar.solar_position_at(location, times)
    best = int(np.argmin(position.zenith_deg))
    assert abs(position.hour_angle_deg[best]) < 0.05
    expected = abs(location.latitude_deg - position.declination_deg[best])
    assert position.zenith_deg[best] == pytest.approx(expected, abs=0.01)
    # the sun stands due south (north in the southern tropics and beyond) at solar noon
    facing = 180.0 if location.latitude_deg > position.declination_deg[best] else 0.0
    azimuth = position.azimuth_deg[best]
    assert min(abs(azimuth - facing), 360 - abs(azimuth - facing)) < 1.0


def test_declination_at_solstices_and_equinox() -> None:
    times = [
        datetime(2024, 6, 20, 20, 51, tzinfo=UTC),  # June solstice 2024
        datetime(2024, 12, 21, 9, 20, tzinfo=UTC),  # December solstice 2024
        datetime(2025, 3, 20, 9, 1, tzinfo=UTC),  # March equinox 2025
    ]
    declination = solar.solar_position_at(SHANGHAI, times).declination_deg
    assert declination[0] == pytest.approx(23.44, abs=0.01)
    assert declination[1] == pytest.approx(-23.44, abs=0.01)
    assert declination[2] == pytest.approx(0.0, abs=0.01)


def test_pv_is_zero_at_night_and_positive_at_noon() -> None:
    asset = pv()
    # Shanghai is UTC+8: 14:00 UTC is 22:00 local, 04:00 UTC is noon
    night = [datetime(2025, 6, 1, h, tzinfo=UTC) for h in (13, 14, 16, 18, 20)]
    assert np.all(solar.pv_available_kw(asset, SHANGHAI, night) == 0.0)
    noon = solar.pv_available_kw(asset, SHANGHAI, [datetime(2025, 6, 1, 4, tzinfo=UTC)])
    # ~1000 W/m² POA in June at 31° N; PR 0.82 of 1000 kWp
    assert 600.0 < noon[0] <= 1000.0


def test_pv_is_symmetric_around_solar_noon() -> None:
    asset = pv(tilt_deg=25.0, azimuth_deg=180.0)
    day = datetime(2025, 4, 10, tzinfo=UTC)
    times = [day + timedelta(seconds=s) for s in range(0, 86400, 30)]
    position = solar.solar_position_at(SHANGHAI, times)
    noon = times[int(np.argmin(position.zenith_deg))]
    for hours in (1.0, 2.5, 4.0, 5.5):
        offset = timedelta(hours=hours)
        before, after = solar.pv_available_kw(asset, SHANGHAI, [noon - offset, noon + offset])
        assert before > 0
        assert before == pytest.approx(after, rel=0.01)


def test_southern_hemisphere_symmetry_and_night() -> None:
    asset = pv(azimuth_deg=0.0)  # facing the equator from the south
    day = datetime(2025, 1, 15, tzinfo=UTC)
    power = solar.pv_available_kw(asset, SYDNEY, minutes(day, 5))
    assert power.min() == 0.0
    assert power.max() > 500.0
    # Sydney is UTC+11 in January: local midnight is 13:00 UTC
    assert solar.pv_available_kw(asset, SYDNEY, [day + timedelta(hours=13)])[0] == 0.0


def daily_poa_kwh_per_m2(location: Location, day: datetime, tilt: float, azimuth: float) -> float:
    times = minutes(day, 5)
    position = solar.solar_position_at(location, times)
    irradiance = solar.clear_sky_irradiance(position, location.altitude_m)
    poa = solar.poa_irradiance(irradiance, position.zenith_deg, position.azimuth_deg, tilt, azimuth)
    return float(poa.sum() * 5 / 60 / 1000)


def test_tilt_toward_equator_raises_winter_poa() -> None:
    winter = datetime(2024, 12, 21, tzinfo=UTC)
    flat = daily_poa_kwh_per_m2(SHANGHAI, winter, 0.0, 180.0)
    south = daily_poa_kwh_per_m2(SHANGHAI, winter, 30.0, 180.0)
    north = daily_poa_kwh_per_m2(SHANGHAI, winter, 30.0, 0.0)
    assert south > 1.3 * flat
    assert north < 0.7 * flat
    # in the southern winter the equator is to the north
    june = datetime(2025, 6, 21, tzinfo=UTC)
    assert daily_poa_kwh_per_m2(SYDNEY, june, 30.0, 0.0) > 1.3 * daily_poa_kwh_per_m2(
        SYDNEY, june, 0.0, 0.0
    )


def test_flat_panel_poa_equals_ghi() -> None:
    times = minutes(datetime(2025, 5, 5, tzinfo=UTC), 15)
    position = solar.solar_position_at(SHANGHAI, times)
    irradiance = solar.clear_sky_irradiance(position)
    poa = solar.poa_irradiance(irradiance, position.zenith_deg, position.azimuth_deg, 0.0, 123.0)
    np.testing.assert_allclose(poa, irradiance.ghi_w_m2, atol=1e-9)


def test_erbs_split_closes_the_balance() -> None:
    zenith = np.array([10.0, 30.0, 50.0, 70.0, 85.0, 88.0, 95.0])
    ghi = np.array([900.0, 700.0, 300.0, 150.0, 40.0, 10.0, 0.0])
    split = solar.erbs(ghi, zenith)
    cos_zenith = np.cos(np.radians(zenith))
    np.testing.assert_allclose(split.dni_w_m2 * np.maximum(cos_zenith, 0) + split.dhi_w_m2, ghi)
    assert np.all(split.dni_w_m2 >= 0)
    assert np.all(split.dhi_w_m2 >= 0)
    assert split.dni_w_m2[-2] == 0.0  # beyond 87°: all diffuse
    # overcast (clearness 0.1): diffuse fraction 1 - 0.09 kt
    overcast = solar.erbs(0.1 * 1361.0 * math.cos(math.radians(30)), 30.0, 1361.0)
    assert float(overcast.dhi_w_m2 / overcast.ghi_w_m2) == pytest.approx(1 - 0.009)
    # very clear (kt 0.85): diffuse fraction 0.165
    clear = solar.erbs(0.85 * 1361.0 * math.cos(math.radians(30)), 30.0, 1361.0)
    assert float(clear.dhi_w_m2 / clear.ghi_w_m2) == pytest.approx(0.165)


def test_ineichen_is_close_to_haurwitz_and_grows_with_altitude() -> None:
    zenith = np.array([0.0, 20.0, 40.0, 60.0])
    ineichen = solar.clear_sky_ghi(zenith, linke_turbidity=3.0)
    haurwitz = solar.haurwitz_ghi(zenith)
    np.testing.assert_allclose(ineichen, haurwitz, rtol=0.12)
    high = solar.clear_sky_ghi(zenith, altitude_m=3000.0, linke_turbidity=3.0)
    assert np.all(high > ineichen)
    hazy = solar.clear_sky_ghi(zenith, linke_turbidity=5.0)
    assert np.all(hazy < ineichen)
    assert np.all(solar.clear_sky_ghi(np.array([90.5, 120.0])) == 0.0)


def test_inverter_caps_output_and_temperature_derates() -> None:
    asset = pv(capacity_kwp=1000, inverter_kw=500, performance_ratio=1.0)
    noon = [datetime(2025, 6, 1, 4, tzinfo=UTC)]
    assert solar.pv_available_kw(asset, SHANGHAI, noon)[0] == pytest.approx(500.0)
    # a 1000 W/m² plane at 35 °C ambient: cell at 35 + 25/800·1000 = 66.25 °C
    derate = solar.temperature_derate(1000.0, 35.0)
    assert float(derate) == pytest.approx(1 - 0.004 * (66.25 - 25.0))
    uncapped = pv(capacity_kwp=100)
    hot = solar.pv_available_kw(uncapped, SHANGHAI, noon, ambient_c=35.0)
    cool = solar.pv_available_kw(uncapped, SHANGHAI, noon)
    assert hot[0] < cool[0]


def test_clear_sky_index_scales_output_down() -> None:
    asset = pv()
    noon = [datetime(2025, 6, 1, 4, tzinfo=UTC)] * 3
    power = solar.pv_available_kw(asset, SHANGHAI, noon, clear_sky_index=np.array([1.0, 0.5, 0.1]))
    assert power[0] > power[1] > power[2] > 0.0


def test_datetime64_and_aware_datetimes_agree() -> None:
    aware = [datetime(2025, 7, 1, 3, 15, tzinfo=UTC), datetime(2025, 7, 1, 11, 15, tzinfo=UTC)]
    as64 = np.array(["2025-07-01T03:15", "2025-07-01T11:15"], dtype="datetime64[s]")
    np.testing.assert_allclose(
        solar.solar_position_at(SHANGHAI, aware).zenith_deg,
        solar.solar_position_at(SHANGHAI, as64).zenith_deg,
    )


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        solar.epoch_seconds([datetime(2025, 7, 1, 3, 15)])  # noqa: DTZ001
