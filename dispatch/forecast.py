"""Forecasts of every asset's uncontrolled power over a horizon, with quantile bands.

Loads: similar-day baselines from measured history (same weekday over the last weeks, then the
same day type), falling back to the enrolled profile where history is short. PV: clear-sky
output at the park's location and the array's orientation, scaled by a correction ratio learnt
from recent history. EV depots: booked sessions and the expected arrivals of the arrival profile.
Thermal loads: the power that holds their band. Everything is pure: inputs in, `ParkForecast` out.

Quantile levels refer to the signed power (positive = drawn): for PV, the 0.1 quantile is the
*largest* generation (most negative power).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from statistics import NormalDist
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd

from dispatch.series import AssetForecast, EvSessionForecast, FloatArray, Horizon, ParkForecast
from vpp.config.schema import (
    AnyAsset,
    CurtailableLoad,
    EvCharging,
    LoadProfile,
    Location,
    Park,
    PvAsset,
    ThermalLoad,
)
from vpp.domain import Measurement
from vpp.errors import VPPError
from vpp.solar import pv_available_kw

BoolArray = npt.NDArray[np.bool_]
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)

History = pd.DataFrame | Mapping[str, "pd.Series[float]"]
"""Measured power per asset in kW (project sign), on a timezone-aware DatetimeIndex.

Either a DataFrame whose columns are asset ids or a mapping of asset id to Series. Samples may
be irregular (raw telemetry) or already on an interval grid; they are averaged per interval.
"""


class HistoryError(VPPError):
    """Measured history cannot be used as given; `asset_id` names the series at fault."""

    def __init__(self, asset_id: str, message: str) -> None:
        self.asset_id = asset_id
        super().__init__(f"history of {asset_id!r}: {message}")


@dataclass(frozen=True, slots=True)
class ForecastOptions:
    """Tuning of the forecasts; the defaults suit 15-minute markets and a few weeks of history."""

    similar_weeks: int = 4  # look back this many weeks for similar days
    min_similar_days: int = 3  # fewer similar days than this: fall back to the next method
    spread_window_h: float = 1.0  # residuals within ± this many hours are pooled for quantiles
    pv_history_days: int = 14  # PV correction from this many recent days
    pv_high_sun_fraction: float = 0.5  # "high sun": clear-sky at least this share of day's peak
    pv_min_days: int = 3  # fewer usable days than this: no correction, prior band
    pv_prior_ratio_sd: float = 0.25  # spread of the measured/clear-sky ratio without history
    pv_max_ratio: float = 1.2  # measured above clear-sky by more than this is not weather
    # Which local dates are working days (e.g. a market calendar's `is_working_day`, which
    # knows public holidays and make-up weekends); default Monday to Friday.
    working_day: Callable[[date], bool] | None = None


@dataclass(frozen=True, slots=True)
class PvCorrection:
    """Measured/clear-sky ratio of one PV array: median and quantiles, from `days` days."""

    ratio: float
    ratio_quantiles: Mapping[float, float]
    days: int


# --- history normalisation --------------------------------------------------------------------


def history_from_measurements(measurements: Iterable[Measurement]) -> dict[str, pd.Series[float]]:
    """Turn telemetry readings into the per-asset series `forecast_park` takes."""
    times: dict[str, list[datetime]] = {}
    values: dict[str, list[float]] = {}
    for m in measurements:
        times.setdefault(m.asset_id, []).append(m.timestamp)
        values.setdefault(m.asset_id, []).append(m.power_kw)
    return {
        asset_id: pd.Series(values[asset_id], index=pd.DatetimeIndex(times[asset_id]), dtype=float)
        for asset_id in times
    }


def _series_of(history: History | None) -> dict[str, pd.Series[float]]:
    if history is None:
        return {}
    if isinstance(history, pd.DataFrame):
        return {str(column): history[column].astype(float) for column in history.columns}
    return {str(key): series.astype(float) for key, series in history.items()}


def _checked(asset_id: str, series: pd.Series[float]) -> pd.Series[float]:
    index = series.index
    if not isinstance(index, pd.DatetimeIndex):
        raise HistoryError(asset_id, "index is not timestamps")
    if index.tz is None:
        raise HistoryError(asset_id, "timestamps must be timezone-aware")
    if not np.isfinite(series.dropna().to_numpy(dtype=float)).all():
        raise HistoryError(asset_id, "values must be finite kW (NaN marks a gap)")
    return series.sort_index()


def _on_grid(
    series: pd.Series[float], tz: ZoneInfo, horizon: Horizon, since: datetime
) -> pd.Series[float]:
    """Mean power per horizon-aligned interval, on local wall-clock (naive) timestamps.

    Only samples in [since, horizon.start) count: a forecast never sees its own future.
    """
    index = pd.DatetimeIndex(series.index)
    stamps = index.asi8  # integer time stamps: cheap, exact comparisons
    unit = pd.Timedelta(1, unit=index.unit).value  # ns per index unit
    first = pd.Timestamp(since).value // unit
    stop = pd.Timestamp(horizon.start).value // unit
    inside = np.flatnonzero((stamps >= first) & (stamps < stop))
    if inside.size == 0:
        return pd.Series(dtype=float)
    local = pd.Series(
        series.to_numpy(dtype=float)[inside],
        index=index[inside].tz_convert(tz).tz_localize(None),
    )
    origin = pd.Timestamp(horizon.start.astimezone(tz).replace(tzinfo=None))
    grid = local.resample(pd.Timedelta(horizon.interval), origin=origin).mean()
    return grid.dropna()


@lru_cache(maxsize=32)
def _local_starts(horizon: Horizon, tz: ZoneInfo) -> pd.DatetimeIndex:
    # Cached: a park's every load asks for the same horizon (10,000 assets, one conversion).
    return pd.DatetimeIndex([t.astimezone(tz).replace(tzinfo=None) for t in horizon.starts()])


@lru_cache(maxsize=32)
def _profile_clock(
    horizon: Horizon, tz: ZoneInfo, working_day: Callable[[date], bool] | None
) -> tuple[FloatArray, BoolArray]:
    """Local minute of the day and working-day flag of every interval start (cached)."""
    starts = _local_starts(horizon, tz)
    minute = np.asarray(starts.hour * 60 + starts.minute + starts.second / 60, dtype=float)
    return minute, _working_days(starts, ForecastOptions(working_day=working_day))


def _clock(
    horizon: Horizon, tz: ZoneInfo, options: ForecastOptions
) -> tuple[FloatArray, BoolArray]:
    try:
        return _profile_clock(horizon, tz, options.working_day)
    except TypeError:  # a working-day test that cannot be hashed: no cache
        starts = _local_starts(horizon, tz)
        minute = np.asarray(starts.hour * 60 + starts.minute + starts.second / 60, dtype=float)
        return minute, _working_days(starts, options)


# --- load baselines ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _z(q: float) -> float:
    return NormalDist().inv_cdf(min(max(q, 1e-6), 1 - 1e-6))


def profile_forecast(
    profile: LoadProfile,
    horizon: Horizon,
    tz: ZoneInfo,
    quantiles: Sequence[float],
    options: ForecastOptions | None = None,
) -> tuple[FloatArray, dict[float, FloatArray]]:
    """The enrolled profile on the horizon, with a normal band of its `noise_fraction`.

    Holidays take the weekend shape and make-up working days the weekday shape.
    """
    minute, working = _clock(horizon, tz, options or ForecastOptions())
    weekday = np.asarray(profile.weekday_kw, dtype=float)
    weekend = weekday if profile.weekend_kw is None else np.asarray(profile.weekend_kw, float)
    # As `LoadProfile.at`, for every interval at once.
    on_weekday = weekday[(minute * weekday.size // 1440).astype(np.int64) % weekday.size]
    on_weekend = weekend[(minute * weekend.size // 1440).astype(np.int64) % weekend.size]
    base = np.where(working, on_weekday, on_weekend)
    bands = {q: np.maximum(base * (1 + _z(q) * profile.noise_fraction), 0.0) for q in quantiles}
    return base, bands


def _lagged(grid: pd.Series[float], targets: pd.DatetimeIndex, lags_days: list[int]) -> FloatArray:
    """Matrix (interval × lag) of the measured value `lag` days before each target; NaN = gap."""
    columns = [
        grid.reindex(targets - pd.Timedelta(days=lag)).to_numpy(dtype=float) for lag in lags_days
    ]
    if not columns:
        return np.full((len(targets), 0), np.nan)
    return np.column_stack(columns)


def _pooled_bands(
    values: FloatArray, window: int, quantiles: Sequence[float]
) -> tuple[FloatArray, FloatArray, dict[float, FloatArray]]:
    """Mean, day count and quantiles per interval from a (interval × day) matrix.

    Residuals from each interval's mean are pooled over ± `window` intervals and inflated by
    sqrt((n+1)/(n-1)): a residual from an n-day mean understates the error of a new day.
    """
    count = np.sum(~np.isnan(values), axis=1).astype(float)
    with np.errstate(invalid="ignore"):
        total = np.nansum(values, axis=1)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    residuals = values - mean[:, None]
    bands = {q: np.full(len(mean), np.nan) for q in quantiles}
    for k in range(len(mean)):
        if count[k] < 2:
            continue
        pooled = residuals[max(0, k - window) : k + window + 1].ravel()
        pooled = pooled[~np.isnan(pooled)]
        inflate = math.sqrt((count[k] + 1) / (count[k] - 1))
        levels = np.quantile(pooled * inflate, list(quantiles))
        for q, level in zip(quantiles, levels, strict=True):
            bands[q][k] = mean[k] + level
    return mean, count, bands


def load_baseline(
    history: pd.Series[float] | None,
    profile: LoadProfile,
    horizon: Horizon,
    tz: ZoneInfo,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    options: ForecastOptions | None = None,
) -> tuple[FloatArray, dict[float, FloatArray]]:
    """Similar-day baseline of one load, interval by interval.

    Per interval: the mean of the same weekday over the last `similar_weeks` weeks when at least
    `min_similar_days` of them were measured; else the mean of the same day type (working day
    or not, per `options.working_day`) over those weeks; else the enrolled profile. Days of the
    other type never count, so a holiday Monday neither is nor uses a normal Monday. Quantiles
    come from the spread of the days used.
    """
    options = options or ForecastOptions()
    fallback, fallback_bands = profile_forecast(profile, horizon, tz, quantiles, options)
    if history is None or history.empty:
        return fallback, fallback_bands
    since = horizon.start - timedelta(weeks=options.similar_weeks)
    grid = _on_grid(history, tz, horizon, since)
    if grid.empty:
        return fallback, fallback_bands
    targets = _local_starts(horizon, tz)
    window = max(0, round(options.spread_window_h / horizon.hours))
    working = _working_days(targets, options)
    # Lag d counts for interval k only if (target_k - d) is the same day type (working day or
    # not); for the same-weekday tier it must also be the same weekday.
    week_lags = [7 * w for w in range(1, options.similar_weeks + 1)]
    same_weekday = _lagged(grid, targets, week_lags)
    for j, lag in enumerate(week_lags):
        other = _working_days(targets - pd.Timedelta(days=lag), options) != working
        same_weekday[other, j] = np.nan
    mean_w, count_w, bands_w = _pooled_bands(same_weekday, window, quantiles)
    lags = list(range(1, 7 * options.similar_weeks + 1))
    same_type = _lagged(grid, targets, lags)
    for j, lag in enumerate(lags):
        other = _working_days(targets - pd.Timedelta(days=lag), options) != working
        same_type[other, j] = np.nan
    mean_t, count_t, bands_t = _pooled_bands(same_type, window, quantiles)

    use_w = count_w >= options.min_similar_days
    use_t = ~use_w & (count_t >= options.min_similar_days)
    base = np.where(use_w, mean_w, np.where(use_t, mean_t, fallback))
    bands: dict[float, FloatArray] = {}
    for q in quantiles:
        band = np.where(use_w, bands_w[q], np.where(use_t, bands_t[q], fallback_bands[q]))
        bands[q] = np.maximum(band, 0.0)
    return np.maximum(base, 0.0), _monotone(bands)


def _working_days(stamps: pd.DatetimeIndex, options: ForecastOptions) -> BoolArray:
    """Whether each (local, naive) timestamp falls on a working day."""
    if options.working_day is None:
        return np.asarray(stamps.day_of_week < 5, dtype=bool)
    test = options.working_day
    days = {d: test(d) for d in set(stamps.date)}
    return np.array([days[d] for d in stamps.date], dtype=bool)


def _monotone(bands: dict[float, FloatArray]) -> dict[float, FloatArray]:
    """Quantile arrays that never cross (a higher level is never below a lower one)."""
    ordered = sorted(bands)
    out: dict[float, FloatArray] = {}
    running: FloatArray | None = None
    for q in ordered:
        running = bands[q] if running is None else np.maximum(running, bands[q])
        out[q] = running
    return out


# --- PV ---------------------------------------------------------------------------------------


def clear_sky_kw(
    asset: PvAsset, location: Location, starts: pd.DatetimeIndex, interval: timedelta
) -> FloatArray:
    """Mean clear-sky output (kW, >= 0) over each interval beginning at `starts`.

    Averaged over three instants per interval: one mid-interval sample misjudges the hours
    around sunrise and sunset on 60-minute grids.
    """
    utc = pd.DatetimeIndex(starts).tz_convert("UTC").tz_localize(None)
    samples = [
        pv_available_kw(asset, location, (utc + interval * fraction).to_numpy())
        for fraction in (1 / 6, 1 / 2, 5 / 6)
    ]
    return np.asarray(np.mean(samples, axis=0), dtype=float)


def pv_correction(
    asset_id: str,
    measured_kw: pd.Series[float] | None,
    clear_kw: pd.Series[float] | None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    options: ForecastOptions | None = None,
) -> PvCorrection:
    """Measured/clear-sky ratio at high-sun hours, one value per day, summarised.

    `measured_kw` is in project sign (generation negative); `clear_kw` is the clear-sky output
    (>= 0) on the same timestamps. Days with too few high-sun samples are skipped; with fewer
    than `pv_min_days` usable days the ratio is 1 and the band is the prior spread.
    """
    options = options or ForecastOptions()
    prior = {q: min(max(1.0 + _z(q) * options.pv_prior_ratio_sd, 0.0), 1.0) for q in quantiles}
    if measured_kw is None or clear_kw is None or measured_kw.empty:
        return PvCorrection(1.0, prior, 0)
    frame = pd.DataFrame({"measured": measured_kw, "clear": clear_kw}).dropna()
    if frame.empty:
        return PvCorrection(1.0, prior, 0)
    days = pd.DatetimeIndex(frame.index).normalize()
    peak = frame["clear"].groupby(days).transform("max")
    high = frame[(frame["clear"] > 0) & (frame["clear"] >= options.pv_high_sun_fraction * peak)]
    if not high.empty and float((high["measured"] > 0).mean()) > 0.5:
        raise HistoryError(
            asset_id, "measured PV power is positive at high sun; generation is negative power"
        )
    ratios: list[float] = []
    for _, day in high.groupby(pd.DatetimeIndex(high.index).normalize()):
        clear = float(day["clear"].sum())
        if len(day) < 2 or clear <= 0:
            continue
        generated = float(np.maximum(-day["measured"].to_numpy(dtype=float), 0.0).sum())
        ratios.append(min(generated / clear, options.pv_max_ratio))
    if len(ratios) < options.pv_min_days:
        return PvCorrection(1.0, prior, len(ratios))
    values = np.array(ratios, dtype=float)
    levels = np.quantile(values, list(quantiles))
    return PvCorrection(
        float(np.median(values)),
        {q: float(v) for q, v in zip(quantiles, levels, strict=True)},
        len(ratios),
    )


def pv_forecast(
    asset: PvAsset,
    location: Location,
    horizon: Horizon,
    tz: ZoneInfo,
    history: pd.Series[float] | None,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    options: ForecastOptions | None = None,
) -> tuple[AssetForecast, PvCorrection]:
    """Available PV power (negative) on the horizon: clear-sky × correction, with a band."""
    options = options or ForecastOptions()
    clear = clear_sky_kw(asset, location, pd.DatetimeIndex(horizon.starts()), horizon.interval)
    measured: pd.Series[float] | None = None
    clear_hist: pd.Series[float] | None = None
    if history is not None and not history.empty:
        since = horizon.start - timedelta(days=options.pv_history_days)
        grid = _on_grid(history, tz, horizon, since)
        if not grid.empty:
            aware = pd.DatetimeIndex(grid.index).tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
            keep = np.logical_not(np.asarray(aware.isna(), dtype=bool))
            measured = pd.Series(grid.to_numpy(dtype=float)[keep], index=grid.index[keep])
            clear_hist = pd.Series(
                clear_sky_kw(asset, location, aware[keep], horizon.interval), index=grid.index[keep]
            )
    correction = pv_correction(asset.id, measured, clear_hist, quantiles, options)
    power = 0.0 - clear * correction.ratio  # 0.0 - x: no negative zeros at night
    # Power quantile q is generation quantile (1 - q): the low power tail is high generation.
    bands = {q: 0.0 - clear * _ratio_at(correction, 1 - q) for q in quantiles}
    return AssetForecast(asset.id, power, _monotone(bands)), correction


def _ratio_at(correction: PvCorrection, level: float) -> float:
    """Ratio quantile at `level`, interpolated between the known levels (clamped at the ends)."""
    known = sorted(correction.ratio_quantiles.items())
    xs = [q for q, _ in known]
    ys = [v for _, v in known]
    return float(np.interp(level, xs, ys))


# --- EV depots --------------------------------------------------------------------------------


def _clip_session(
    arrival: int, departure: int, energy_kwh: float, power_kw: float, horizon: Horizon
) -> EvSessionForecast | None:
    """The part of a session inside the horizon, its energy shared pro rata to plugged time."""
    if departure <= arrival or departure <= 0 or arrival >= horizon.intervals:
        return None
    first = max(arrival, 0)
    last = min(departure, horizon.intervals)
    share = (last - first) / (departure - arrival)
    energy = min(energy_kwh * share, power_kw * (last - first) * horizon.hours)
    if energy <= 0:
        return None
    return EvSessionForecast(first, last, energy, power_kw)


def _days_covering(horizon: Horizon, tz: ZoneInfo, back_days: int) -> list[date]:
    first = horizon.start.astimezone(tz).date() - timedelta(days=back_days)
    last = (horizon.end - timedelta(microseconds=1)).astimezone(tz).date()
    return [first + timedelta(days=d) for d in range((last - first).days + 1)]


def booked_sessions(depot: EvCharging, horizon: Horizon, tz: ZoneInfo) -> list[EvSessionForecast]:
    """The depot's booked sessions, repeated every day, on the horizon's grid.

    A vehicle is plugged from the first whole interval after its arrival to the last whole
    interval before its departure (a departure at or before the arrival is the next day).
    """
    sessions: list[EvSessionForecast] = []
    step = horizon.interval
    for day in _days_covering(horizon, tz, back_days=1):
        for booked in depot.sessions:
            arrive = datetime.combine(day, booked.arrival, tz)
            leave = datetime.combine(day, booked.departure, tz)
            if leave <= arrive:
                leave += timedelta(days=1)
            arrival = -((horizon.start - arrive) // step)  # ceil
            departure = (leave - horizon.start) // step  # floor
            clipped = _clip_session(
                arrival, departure, booked.energy_kwh, depot.charger_power_kw, horizon
            )
            if clipped is not None:
                sessions.append(clipped)
    return sessions


def expected_sessions(depot: EvCharging, horizon: Horizon, tz: ZoneInfo) -> list[EvSessionForecast]:
    """The arrival profile as cohorts: one per local clock hour, with expected values.

    A cohort arrives at the middle of its hour, stays the mean dwell and needs expected count ×
    mean energy at up to expected count × charger power: deterministic expected values.
    """
    profile = depot.arrival_profile
    if profile is None:
        return []
    sessions: list[EvSessionForecast] = []
    step = horizon.interval
    dwell = timedelta(hours=profile.mean_dwell_h)
    back = math.ceil(profile.mean_dwell_h / 24) + 1
    for day in _days_covering(horizon, tz, back_days=back):
        midnight = datetime.combine(day, time(0), tz)
        for hour, expected in enumerate(profile.arrivals_per_hour):
            if expected <= 0:
                continue
            arrive = midnight + timedelta(hours=hour, minutes=30)
            arrival = (arrive - horizon.start) // step
            departure = max(round((arrive + dwell - horizon.start) / step), arrival + 1)
            clipped = _clip_session(
                arrival,
                departure,
                expected * profile.mean_energy_kwh,
                expected * depot.charger_power_kw,
                horizon,
            )
            if clipped is not None:
                sessions.append(clipped)
    return sessions


def uncontrolled_ev_kw(
    sessions: Sequence[EvSessionForecast], horizon: Horizon, station_limit_kw: float
) -> FloatArray:
    """Depot power when every vehicle charges flat out from arrival (the no-control baseline).

    When the station limit binds, every session's rate is scaled down alike and the energy not
    delivered is carried into the next interval, until departure.
    """
    remaining = np.array([s.energy_kwh for s in sessions], dtype=float)
    power = np.zeros(horizon.intervals)
    for k in range(horizon.intervals):
        wants = np.array(
            [
                min(s.max_power_kw, remaining[i] / horizon.hours)
                if s.arrival_index <= k < s.departure_index
                else 0.0
                for i, s in enumerate(sessions)
            ],
            dtype=float,
        )
        total = float(wants.sum())
        scale = 1.0 if total <= station_limit_kw or total <= 0 else station_limit_kw / total
        drawn = wants * scale
        remaining = np.maximum(remaining - drawn * horizon.hours, 0.0)
        power[k] = float(drawn.sum())
    return power


def poisson_quantile(level: float, mean: float) -> int:
    """Smallest n with P(N <= n) >= level for N ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    if mean > 400:  # the normal approximation is accurate here and the sum would underflow
        return max(0, math.ceil(mean + _z(level) * math.sqrt(mean) - 0.5))
    term = math.exp(-mean)
    cumulative = term
    n = 0
    while cumulative < level and n < 10_000:
        n += 1
        term *= mean / n
        cumulative += term
    return n


def ev_forecast(
    depot: EvCharging, horizon: Horizon, tz: ZoneInfo, quantiles: Sequence[float]
) -> tuple[AssetForecast, tuple[EvSessionForecast, ...]]:
    """Uncontrolled depot power and its sessions (booked and expected); the band is Poisson.

    Booked sessions are certain. Profile cohorts bring a Poisson number of vehicles, so the
    number charging at once is Poisson with the expected count as mean: the band is booked
    power + that count's quantile × charger power, capped by the station.
    """
    booked = booked_sessions(depot, horizon, tz)
    expected = expected_sessions(depot, horizon, tz)
    sessions = sorted(
        booked + expected, key=lambda s: (s.arrival_index, s.departure_index, s.energy_kwh)
    )
    limit = depot.max_power_kw
    power = uncontrolled_ev_kw(sessions, horizon, limit)
    booked_kw = uncontrolled_ev_kw(booked, horizon, limit)
    vehicles = uncontrolled_ev_kw(expected, horizon, math.inf) / depot.charger_power_kw
    bands: dict[float, FloatArray] = {}
    for q in quantiles:
        counts = np.array([poisson_quantile(q, float(m)) for m in vehicles], dtype=float)
        bands[q] = np.minimum(booked_kw + counts * depot.charger_power_kw, limit)
    return AssetForecast(depot.id, power, _monotone(bands)), tuple(sessions)


# --- the park ---------------------------------------------------------------------------------


def _constant(
    asset_id: str, value_kw: float, horizon: Horizon, quantiles: Sequence[float]
) -> AssetForecast:
    power = np.full(horizon.intervals, value_kw, dtype=float)
    return AssetForecast(asset_id, power, {q: power.copy() for q in quantiles})


def forecast_asset(
    asset: AnyAsset,
    park: Park,
    horizon: Horizon,
    history: pd.Series[float] | None,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    options: ForecastOptions | None = None,
) -> tuple[AssetForecast, tuple[EvSessionForecast, ...]]:
    """Forecast of one asset (and its EV sessions, for a depot)."""
    tz = park.tz
    match asset:
        case CurtailableLoad():
            base, bands = load_baseline(
                history, asset.profile, horizon, tz, quantiles=quantiles, options=options
            )
            return AssetForecast(asset.id, base, bands), ()
        case PvAsset():
            forecast, _ = pv_forecast(
                asset, park.location, horizon, tz, history, quantiles=quantiles, options=options
            )
            return forecast, ()
        case EvCharging():
            return ev_forecast(asset, horizon, tz, quantiles)
        case ThermalLoad():
            return _constant(asset.id, asset.holding_power_kw, horizon, quantiles), ()
    # Batteries, generators and shiftable loads have no uncontrolled power of their own.
    return _constant(asset.id, 0.0, horizon, quantiles), ()


def forecast_park(
    park: Park,
    horizon: Horizon,
    history: History | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    options: ForecastOptions | None = None,
) -> ParkForecast:
    """Forecast every asset of the park over `horizon`; history is optional and may be partial.

    History series of ids that are not assets of the park are ignored (a feed may carry site
    meters too).
    """
    levels = tuple(sorted(set(quantiles)))
    if any(not 0 < q < 1 for q in levels):
        raise VPPError(f"forecast quantile levels must lie in (0, 1), got {list(quantiles)}")
    measured = {key: _checked(key, series) for key, series in _series_of(history).items()}
    assets: dict[str, AssetForecast] = {}
    sessions: dict[str, tuple[EvSessionForecast, ...]] = {}
    for _, asset in park.iter_assets():
        forecast, depot_sessions = forecast_asset(
            asset, park, horizon, measured.get(asset.id), quantiles=levels, options=options
        )
        assets[asset.id] = forecast
        if isinstance(asset, EvCharging):
            sessions[asset.id] = depot_sessions
    return ParkForecast(horizon=horizon, assets=assets, ev_sessions=sessions)


def forecast_at(forecast: ParkForecast, level: float) -> ParkForecast:
    """The forecast with every asset at its `level` quantile (a level it was made with).

    `forecast_at(f, 0.1)` is the low-power case: loads low and PV high, i.e. the least room a
    park has to reduce its draw, which is what a firm DR offer should be built on.
    """
    assets: dict[str, AssetForecast] = {}
    for asset_id, asset in forecast.assets.items():
        if level not in asset.quantiles_kw:
            known = ", ".join(f"{q:g}" for q in sorted(asset.quantiles_kw)) or "none"
            raise VPPError(f"forecast of {asset_id!r} has no {level:g} quantile (has {known})")
        power = np.asarray(asset.quantiles_kw[level], dtype=float)
        assets[asset_id] = AssetForecast(asset_id, power, asset.quantiles_kw)
    return ParkForecast(forecast.horizon, assets, forecast.ev_sessions, forecast.ambient_c)
