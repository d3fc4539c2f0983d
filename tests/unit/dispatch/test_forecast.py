"""Forecasts against synthetic history whose answer is known, and the EV and PV models by hand."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.forecast import (
    ForecastOptions,
    HistoryError,
    booked_sessions,
    clear_sky_kw,
    ev_forecast,
    expected_sessions,
    forecast_at,
    forecast_park,
    history_from_measurements,
    load_baseline,
    poisson_quantile,
    pv_correction,
    pv_forecast,
    uncontrolled_ev_kw,
)
from dispatch.series import EvSessionForecast, Horizon
from vpp.config import load_park
from vpp.config.schema import EvCharging, LoadProfile, Location, Park, PvAsset
from vpp.domain import Measurement
from vpp.errors import VPPError

TZ = ZoneInfo("Asia/Shanghai")
QUARTER = timedelta(minutes=15)
SMALL_PARK = "tests/fixtures/small_park.yaml"
MARKETS = "config/markets"
# Monday 2 June 2025, local midnight.
MONDAY = datetime(2025, 6, 2, tzinfo=TZ)
FLAT_PROFILE = LoadProfile(weekday_kw=[100.0] * 24, weekend_kw=[50.0] * 24, noise_fraction=0.05)


def _pattern_kw(index: pd.DatetimeIndex) -> np.ndarray:
    """A weekly load shape: a day curve, a level per weekday and low weekends."""
    local = index.tz_convert(TZ)
    hours = np.asarray(local.hour + local.minute / 60, dtype=float)
    weekday = np.asarray(local.day_of_week, dtype=float)
    day = 500 + 300 * np.clip(np.sin((hours - 6) / 12 * np.pi), 0, None) + 25 * weekday
    return np.where(weekday >= 5, 200 + 0 * hours, day)


def _history(start: datetime, end: datetime, noise_kw: float, seed: int) -> pd.Series:
    index = pd.date_range(start, end, freq=QUARTER, inclusive="left")
    rng = np.random.default_rng(seed)
    values = _pattern_kw(index) + rng.normal(0, noise_kw, len(index))
    return pd.Series(values, index=index)


def test_similar_day_baseline_recovers_the_weekly_pattern() -> None:
    horizon = Horizon(MONDAY, QUARTER, 7 * 96)
    history = _history(MONDAY - timedelta(weeks=6), MONDAY, noise_kw=20, seed=1)
    base, bands = load_baseline(history, FLAT_PROFILE, horizon, TZ)
    truth = _pattern_kw(pd.DatetimeIndex(horizon.starts()))
    error = base - truth
    # A 4-day mean of N(0, 20) noise has a standard deviation of 10 kW.
    assert np.abs(error).mean() < 12
    assert np.abs(error).max() < 50
    # The 10-90 % band should hold about 80 % of a fresh week drawn the same way.
    fresh = truth + np.random.default_rng(2).normal(0, 20, len(truth))
    inside = (fresh >= bands[0.1]) & (fresh <= bands[0.9])
    assert 0.7 <= inside.mean() <= 0.9
    assert np.all(bands[0.1] <= bands[0.5])
    assert np.all(bands[0.5] <= bands[0.9])


def test_short_history_falls_back_to_the_enrolled_profile() -> None:
    horizon = Horizon(MONDAY, QUARTER, 2 * 96)
    history = _history(MONDAY - timedelta(days=2), MONDAY, noise_kw=0, seed=0)  # Sat and Sun
    base, bands = load_baseline(history, FLAT_PROFILE, horizon, TZ)
    np.testing.assert_allclose(base, 100.0)  # weekday profile, not the measured weekend 200
    np.testing.assert_allclose(bands[0.9], 100.0 * (1 + 1.2815515655446004 * 0.05))


def test_two_weeks_of_history_use_the_same_day_type() -> None:
    """Two Mondays are too few, but ten working days are enough for a working-day profile."""
    horizon = Horizon(MONDAY, QUARTER, 96)
    history = _history(MONDAY - timedelta(weeks=2), MONDAY, noise_kw=0, seed=0)
    base, _ = load_baseline(history, FLAT_PROFILE, horizon, TZ)
    starts = pd.DatetimeIndex(horizon.starts())
    hours = np.asarray(starts.tz_convert(TZ).hour + starts.tz_convert(TZ).minute / 60)
    # Mean of Monday..Friday levels (25 × weekday) is 50 kW above a Monday.
    expected = 500 + 300 * np.clip(np.sin((hours - 6) / 12 * np.pi), 0, None) + 50
    np.testing.assert_allclose(base, expected, atol=1e-9)


def test_a_holiday_is_forecast_from_days_off_and_left_out_of_working_days() -> None:
    holiday = MONDAY.date()
    earlier_holiday = (MONDAY - timedelta(weeks=1)).date()
    calendar = {holiday, earlier_holiday}
    options = ForecastOptions(working_day=lambda d: d.weekday() < 5 and d not in calendar)
    history = _history(MONDAY - timedelta(weeks=4), MONDAY, noise_kw=0, seed=0)
    # The Monday a week ago was a holiday: its measured load (a normal Monday's) is a day off.
    base, _ = load_baseline(
        history, FLAT_PROFILE, Horizon(MONDAY, QUARTER, 96), TZ, options=options
    )
    # Days off in the last four weeks: eight weekend days at 200 kW and the holiday Monday.
    pattern = _pattern_kw(
        pd.DatetimeIndex([MONDAY - timedelta(weeks=1) + QUARTER * k for k in range(96)])
    )
    np.testing.assert_allclose(base, (8 * 200 + pattern) / 9)
    # The next Tuesday is a working day: its four working Tuesdays give it exactly.
    tuesday = MONDAY + timedelta(days=1)
    base_tue, _ = load_baseline(
        history, FLAT_PROFILE, Horizon(tuesday, QUARTER, 96), TZ, options=options
    )
    np.testing.assert_allclose(
        base_tue, _pattern_kw(pd.DatetimeIndex(Horizon(tuesday, QUARTER, 96).starts()))
    )


def test_history_at_or_after_the_horizon_start_is_not_used() -> None:
    horizon = Horizon(MONDAY, QUARTER, 96)
    past = _history(MONDAY - timedelta(weeks=5), MONDAY, noise_kw=10, seed=3)
    future = pd.Series(9999.0, index=pd.date_range(MONDAY, periods=96 * 8, freq=QUARTER))
    with_future = pd.concat([past, future])
    base_past, _ = load_baseline(past, FLAT_PROFILE, horizon, TZ)
    base_both, _ = load_baseline(with_future, FLAT_PROFILE, horizon, TZ)
    np.testing.assert_array_equal(base_past, base_both)


def test_irregular_telemetry_is_averaged_per_interval() -> None:
    horizon = Horizon(MONDAY, QUARTER, 96)
    start = MONDAY - timedelta(weeks=4)
    # One reading every 5 minutes alternating 100 / 200 kW: each quarter averages 133.3 or 166.7.
    index = pd.date_range(start, MONDAY, freq=timedelta(minutes=5), inclusive="left")
    values = np.where(np.arange(len(index)) % 2 == 0, 100.0, 200.0)
    measurements = [
        Measurement("load", t.to_pydatetime(), float(v)) for t, v in zip(index, values, strict=True)
    ]
    series = history_from_measurements(measurements)["load"]
    base, _ = load_baseline(series, FLAT_PROFILE, horizon, TZ)
    assert set(np.round(base, 6)) <= {round(400 / 3, 6), round(500 / 3, 6)}


def _pv() -> tuple[PvAsset, Location]:
    asset = PvAsset.model_validate({"id": "pv", "kind": "pv", "capacity_kwp": 800})
    return asset, Location(latitude_deg=31.23, longitude_deg=121.47)


def test_pv_correction_recovers_a_derate_of_0_7() -> None:
    asset, location = _pv()
    horizon = Horizon(MONDAY, QUARTER, 96)
    index = pd.date_range(MONDAY - timedelta(days=14), MONDAY, freq=QUARTER, inclusive="left")
    clear = clear_sky_kw(asset, location, index, QUARTER)
    noise = np.random.default_rng(5).normal(0, 10, len(index))
    measured = pd.Series(-(0.7 * clear) + np.where(clear > 0, noise, 0.0), index=index)
    forecast, correction = pv_forecast(asset, location, horizon, TZ, measured)
    assert correction.days == 14
    assert correction.ratio == pytest.approx(0.7, abs=0.02)
    ahead = clear_sky_kw(asset, location, pd.DatetimeIndex(horizon.starts()), QUARTER)
    assert ahead.max() > 100  # a June day in Shanghai has sun
    np.testing.assert_allclose(forecast.power_kw, -ahead * correction.ratio, atol=1e-9)
    q = forecast.quantiles_kw
    assert np.all(q[0.1] <= q[0.5]) and np.all(q[0.5] <= q[0.9]) and np.all(q[0.9] <= 0)


def test_pv_without_history_is_clear_sky_with_the_prior_band() -> None:
    asset, location = _pv()
    horizon = Horizon(MONDAY, QUARTER, 96)
    forecast, correction = pv_forecast(asset, location, horizon, TZ, None)
    assert correction.ratio == 1.0
    assert correction.days == 0
    ahead = clear_sky_kw(asset, location, pd.DatetimeIndex(horizon.starts()), QUARTER)
    np.testing.assert_allclose(forecast.power_kw, -ahead)
    # Prior: ratio ~ N(1, 0.25) clipped to [0, 1]; its 0.1 quantile is 1 - 1.2816 × 0.25.
    np.testing.assert_allclose(forecast.quantiles_kw[0.9], -ahead * (1 - 1.2815515655 * 0.25))


def test_pv_correction_from_daily_ratios_by_hand() -> None:
    """Three days at 0.6, 0.7 and 0.8 of clear-sky: median 0.7, quantiles from those days."""
    index = pd.date_range("2025-06-01 10:00", periods=3 * 24, freq="h", tz=TZ)
    index = index[(index.hour >= 10) & (index.hour < 14)]
    clear = pd.Series(500.0, index=index)
    day = np.asarray(index.day - 1)
    measured = pd.Series(-500.0 * np.array([0.6, 0.7, 0.8])[day], index=index)
    correction = pv_correction("pv", measured, clear)
    assert correction.days == 3
    assert correction.ratio == pytest.approx(0.7)
    assert correction.ratio_quantiles[0.1] == pytest.approx(0.62)
    assert correction.ratio_quantiles[0.9] == pytest.approx(0.78)


def test_positive_pv_history_is_rejected() -> None:
    asset, location = _pv()
    index = pd.date_range(MONDAY - timedelta(days=5), MONDAY, freq=QUARTER, inclusive="left")
    measured = pd.Series(clear_sky_kw(asset, location, index, QUARTER), index=index)
    with pytest.raises(HistoryError, match="'pv'"):
        pv_forecast(asset, location, Horizon(MONDAY, QUARTER, 96), TZ, measured)


def _depot(**fields: object) -> EvCharging:
    data: dict[str, object] = {"id": "ev", "kind": "ev_charging", "chargers": 10}
    data.update(fields)
    return EvCharging.model_validate(data)


def test_booked_session_charges_flat_out_from_arrival() -> None:
    depot = _depot(
        charger_power_kw=60,
        sessions=[{"arrival": "08:00", "departure": "17:00", "energy_kwh": 300}],
    )
    horizon = Horizon(MONDAY, QUARTER, 96)
    forecast, sessions = ev_forecast(depot, horizon, TZ, (0.1, 0.9))
    assert sessions == (EvSessionForecast(32, 68, 300.0, 60.0),)
    expected = np.zeros(96)
    expected[32:52] = 60.0  # 300 kWh at 60 kW: five hours from 08:00
    np.testing.assert_allclose(forecast.power_kw, expected)
    np.testing.assert_allclose(forecast.quantiles_kw[0.1], expected)  # booked: certain


def test_overnight_and_cut_sessions_keep_their_energy_pro_rata() -> None:
    depot = _depot(
        charger_power_kw=50,
        sessions=[{"arrival": "22:00", "departure": "06:00", "energy_kwh": 80}],
    )
    # A horizon from 02:00 to 24:00: the night before is cut (4 of 8 h left), tonight's too
    # (2 of 8 h inside).
    horizon = Horizon(MONDAY + timedelta(hours=2), QUARTER, 88)
    sessions = booked_sessions(depot, horizon, TZ)
    assert sessions == [
        EvSessionForecast(0, 16, 40.0, 50.0),
        EvSessionForecast(80, 88, 20.0, 50.0),
    ]


def test_arrival_profile_becomes_hourly_cohorts_with_a_poisson_band() -> None:
    arrivals = [0.0] * 24
    arrivals[8] = 2.0
    depot = _depot(
        charger_power_kw=20,
        arrival_profile={"arrivals_per_hour": arrivals, "mean_energy_kwh": 30, "mean_dwell_h": 4},
    )
    horizon = Horizon(MONDAY, QUARTER, 96)
    # Cohort arrives 08:30 (index 34) and leaves 12:30 (index 50) with 2 × 30 kWh at 2 × 20 kW.
    assert expected_sessions(depot, horizon, TZ) == [EvSessionForecast(34, 50, 60.0, 40.0)]
    forecast, _ = ev_forecast(depot, horizon, TZ, (0.1, 0.5, 0.9))
    charging = slice(34, 40)  # 60 kWh at 40 kW: 1.5 h
    np.testing.assert_allclose(forecast.power_kw[charging], 40.0)
    assert forecast.power_kw.sum() * 0.25 == pytest.approx(60.0)
    # Poisson(2): P(N <= 0) = 0.135, P(N <= 2) = 0.677, P(N <= 3) = 0.857, P(N <= 4) = 0.947.
    np.testing.assert_allclose(forecast.quantiles_kw[0.1][charging], 0.0)
    np.testing.assert_allclose(forecast.quantiles_kw[0.5][charging], 40.0)
    np.testing.assert_allclose(forecast.quantiles_kw[0.9][charging], 80.0)


def test_station_limit_defers_energy_until_departure() -> None:
    horizon = Horizon(MONDAY, timedelta(hours=1), 6)
    sessions = [EvSessionForecast(0, 4, 120.0, 60.0) for _ in range(3)]
    power = uncontrolled_ev_kw(sessions, horizon, station_limit_kw=100.0)
    # 3 × 60 kW want 180; the station gives 100 until the 360 kWh are in: 3.6 h.
    np.testing.assert_allclose(power, [100.0, 100.0, 100.0, 60.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("level", "mean", "expected"),
    [(0.1, 2.0, 0), (0.5, 2.0, 2), (0.9, 2.0, 4), (0.5, 0.0, 0), (0.99, 0.1, 1)],
)
def test_poisson_quantile(level: float, mean: float, expected: int) -> None:
    assert poisson_quantile(level, mean) == expected


@settings(max_examples=30, deadline=None)
@given(mean=st.floats(0.01, 300), level=st.floats(0.01, 0.99))
def test_poisson_quantile_is_the_smallest_count_reaching_the_level(
    mean: float, level: float
) -> None:
    n = poisson_quantile(level, mean)
    pmf = [np.exp(-mean)]
    for k in range(1, n + 1):
        pmf.append(pmf[-1] * mean / k)
    assert sum(pmf) >= level - 1e-12
    assert n == 0 or sum(pmf[:-1]) < level + 1e-12


def _small_park() -> Park:
    return load_park(SMALL_PARK, markets_dir=MARKETS).park


def test_forecast_park_covers_every_asset_and_is_deterministic() -> None:
    park = _small_park()
    horizon = Horizon(MONDAY, QUARTER, 96)
    history = {"load-a": _history(MONDAY - timedelta(weeks=5), MONDAY, 20, seed=4)}
    first = forecast_park(park, horizon, history)
    second = forecast_park(park, horizon, pd.DataFrame(history))
    assert set(first.assets) == {asset.id for _, asset in park.iter_assets()}
    for asset_id, forecast in first.assets.items():
        assert forecast.power_kw.shape == (96,)
        assert sorted(forecast.quantiles_kw) == [0.1, 0.5, 0.9]
        np.testing.assert_array_equal(forecast.power_kw, second.assets[asset_id].power_kw)
    assert first.ev_sessions["ev-b"] == (EvSessionForecast(32, 68, 300.0, 60.0),)
    np.testing.assert_allclose(first.assets["cold-b"].power_kw, 70.4)  # (4 × 44) / 2.5
    np.testing.assert_allclose(first.assets["bat-a"].power_kw, 0.0)


def test_forecast_at_a_quantile_takes_every_asset_at_that_level() -> None:
    park = _small_park()
    horizon = Horizon(MONDAY, QUARTER, 96)
    forecast = forecast_park(park, horizon)
    low = forecast_at(forecast, 0.1)
    for asset_id, asset in forecast.assets.items():
        np.testing.assert_array_equal(low.assets[asset_id].power_kw, asset.quantiles_kw[0.1])
    # Loads low, PV generating more: the park draws less than expected.
    assert sum(a.power_kw.sum() for a in low.assets.values()) < sum(
        a.power_kw.sum() for a in forecast.assets.values()
    )
    assert low.ev_sessions == forecast.ev_sessions
    with pytest.raises(VPPError, match=r"no 0\.25 quantile"):
        forecast_at(forecast, 0.25)


def test_naive_history_timestamps_are_rejected() -> None:
    series = pd.Series([1.0, 2.0], index=pd.date_range("2025-06-01", periods=2, freq="h"))
    with pytest.raises(HistoryError, match=r"load-a.*timezone-aware"):
        forecast_park(_small_park(), Horizon(MONDAY, QUARTER, 4), {"load-a": series})


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    weeks=st.integers(0, 5),
    start_quarter=st.integers(0, 95),
)
def test_load_bands_are_ordered_and_non_negative(seed: int, weeks: int, start_quarter: int) -> None:
    start = MONDAY + QUARTER * start_quarter
    horizon = Horizon(start, QUARTER, 96)
    history = _history(start - timedelta(weeks=weeks), start, noise_kw=150, seed=seed)
    options = ForecastOptions(similar_weeks=4)
    base, bands = load_baseline(history, FLAT_PROFILE, horizon, TZ, options=options)
    again, _ = load_baseline(history, FLAT_PROFILE, horizon, TZ, options=options)
    np.testing.assert_array_equal(base, again)
    assert np.all(base >= 0)
    assert np.all(bands[0.1] >= 0)
    assert np.all(bands[0.1] <= bands[0.5]) and np.all(bands[0.5] <= bands[0.9])
