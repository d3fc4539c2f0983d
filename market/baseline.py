"""Customer baselines: what a site would have drawn without the event, from its meter history.

Four methods, chosen per rule set (`baseline.method`): CAISO 10-in-10, PJM high 4 of 5, the
average of the last 5 normal working days and high 5 of 10. Each takes the most recent eligible
days of the event day's type (working or not, from the rule set's calendar), skipping event
days, holidays and days with missing meter data; keeps the days with the highest load over the
event window when the method says so; averages them interval by interval; then applies the
optional same-day adjustment. Meter history is a pandas Series of average kW per interval,
indexed by timezone-aware interval starts.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from market.rules import RuleSetBase
from vpp.errors import VPPError


class BaselineError(VPPError):
    """A baseline cannot be computed; `site` names the enterprise (or the park) concerned."""

    def __init__(self, site: str, message: str) -> None:
        self.site = site
        super().__init__(f"baseline of {site}: {message}")


@dataclass(frozen=True, slots=True)
class Baseline:
    """A site's baseline over an event window, and how it was built."""

    site: str
    method: str
    event_day: date
    days: tuple[date, ...]  # the days averaged, most recent first
    candidates: tuple[date, ...]  # the eligible days the method chose from
    starts: tuple[datetime, ...]  # interval starts of the event window
    unadjusted_kw: tuple[float, ...]
    baseline_kw: tuple[float, ...]
    adjustment: str
    adjustment_factor: float  # multiplicative adjustment applied (1.0 when none)
    adjustment_kw: float  # additive adjustment applied (0.0 when none)

    def at(self, start: datetime) -> float:
        """The baseline power of the interval starting at `start`."""
        return self.baseline_kw[self.starts.index(start)]

    def as_series(self) -> pd.Series:
        return pd.Series(self.baseline_kw, index=pd.DatetimeIndex(self.starts), dtype=float)


@dataclass(frozen=True, slots=True)
class BaselineSet:
    """Baselines of each enterprise and of the park (built from the summed meter history)."""

    park: Baseline
    enterprises: Mapping[str, Baseline]


def compute_baseline(
    history: pd.Series,
    event_start: datetime,
    event_end: datetime,
    rules: RuleSetBase,
    excluded_days: Collection[date] = (),
    holidays: Collection[date] = (),
    site: str = "park",
) -> Baseline:
    """The baseline of one site for the event [event_start, event_end).

    `excluded_days` are earlier event days; `holidays` add to the rule set's calendar.
    """
    if event_start.tzinfo is None or event_end <= event_start:
        raise BaselineError(site, "the event needs a timezone-aware start before its end")
    tz = rules.tz
    step = rules.interval
    values = _local_values(history, rules, site)
    event_day = event_start.astimezone(tz).date()
    starts = _window(event_start, event_end, step, rules)
    method = rules.baseline
    working = _is_working(event_day, rules, holidays)
    skip = set(excluded_days)

    candidates: list[date] = []
    for back in range(1, method.max_lookback_days + 1):
        day = event_day - timedelta(days=back)
        if day in skip or _is_working(day, rules, holidays) != working:
            continue
        if not _complete_day(values, day, rules):
            continue
        candidates.append(day)
        if len(candidates) == method.pool_days:
            break
    if len(candidates) < method.required_days:
        kind = "working" if working else "non-working"
        raise BaselineError(
            site,
            f"{method.method} needs {method.required_days} eligible {kind} days within "
            f"{method.max_lookback_days} days before {event_day.isoformat()}, found "
            f"{len(candidates)}",
        )

    def mean_on(day: date, moments: list[datetime]) -> float:
        return sum(_shifted(values, m, event_day, day, site) for m in moments) / len(moments)

    keep = min(method.keep_days, len(candidates))
    # Ties go to the more recent day: candidates are most recent first and the sort is stable.
    ranked = (
        sorted(candidates, key=lambda d: -mean_on(d, starts))
        if keep < len(candidates)
        else candidates
    )
    days = tuple(sorted(ranked[:keep], reverse=True))

    def baseline_at(moment: datetime) -> float:
        return sum(_shifted(values, moment, event_day, d, site) for d in days) / len(days)

    unadjusted = tuple(baseline_at(m) for m in starts)
    factor, offset = 1.0, 0.0
    if method.adjustment != "none":
        window_end = event_start - timedelta(hours=method.adjustment_gap_hours)
        window_start = window_end - timedelta(hours=method.adjustment_window_hours)
        window = _window(window_start, window_end, step, rules)
        actual = [_actual(values, m, site) for m in window]
        actual_kw = sum(actual) / len(actual)
        expected_kw = sum(baseline_at(m) for m in window) / len(window)
        cap = method.adjustment_cap_ratio
        if method.adjustment == "multiplicative":
            factor = actual_kw / expected_kw if expected_kw > 0 else 1.0
            if cap is not None:
                factor = min(max(factor, 1.0 - cap), 1.0 + cap)
        else:
            offset = actual_kw - expected_kw
            if cap is not None:
                limit = cap * abs(expected_kw)
                offset = min(max(offset, -limit), limit)
    adjusted = tuple(v * factor + offset for v in unadjusted)
    return Baseline(
        site=site,
        method=method.method,
        event_day=event_day,
        days=days,
        candidates=tuple(candidates),
        starts=tuple(starts),
        unadjusted_kw=unadjusted,
        baseline_kw=adjusted,
        adjustment=method.adjustment,
        adjustment_factor=factor,
        adjustment_kw=offset,
    )


def compute_baselines(
    histories: Mapping[str, pd.Series],
    event_start: datetime,
    event_end: datetime,
    rules: RuleSetBase,
    excluded_days: Collection[date] = (),
    holidays: Collection[date] = (),
) -> BaselineSet:
    """Baselines of every enterprise in `histories` and of the park (their summed history)."""
    if not histories:
        raise BaselineError("park", "no meter history given")
    enterprises = {
        site: compute_baseline(
            series, event_start, event_end, rules, excluded_days, holidays, site=site
        )
        for site, series in histories.items()
    }
    frame = pd.concat(
        [_utc_index(s, rules, site) for site, s in histories.items()], axis=1, join="outer"
    )
    park_history = frame.sum(axis=1, min_count=frame.shape[1])
    park = compute_baseline(
        park_history, event_start, event_end, rules, excluded_days, holidays, site="park"
    )
    return BaselineSet(park=park, enterprises=enterprises)


def _utc_index(series: pd.Series, rules: RuleSetBase, site: str) -> pd.Series:
    index = series.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise BaselineError(site, "meter history must be indexed by timezone-aware timestamps")
    return pd.Series(series.to_numpy(dtype=float), index=index.tz_convert("UTC"))


def _local_values(history: pd.Series, rules: RuleSetBase, site: str) -> dict[datetime, float]:
    """Meter values keyed by naive local wall-clock interval start (finite values only)."""
    series = _utc_index(history, rules, site)
    local = pd.DatetimeIndex(series.index).tz_convert(rules.tz)
    values: dict[datetime, float] = {}
    for stamp, value in zip(local, series.to_numpy(), strict=True):
        if math.isfinite(value):
            values[stamp.to_pydatetime().replace(tzinfo=None)] = float(value)
    return values


def _window(start: datetime, end: datetime, step: timedelta, rules: RuleSetBase) -> list[datetime]:
    """Interval starts in [start, end), stepped in UTC and shown in the market's timezone."""
    moments = []
    moment = start.astimezone(UTC)
    stop = end.astimezone(UTC)
    while moment < stop:
        moments.append(moment.astimezone(rules.tz))
        moment += step
    return moments


def _is_working(day: date, rules: RuleSetBase, holidays: Collection[date]) -> bool:
    return day not in holidays and rules.calendar.is_working_day(day)


def _complete_day(values: Mapping[datetime, float], day: date, rules: RuleSetBase) -> bool:
    midnight = datetime.combine(day, time.min)
    return all(midnight + rules.interval * k in values for k in range(rules.intervals_per_day))


def _shifted(
    values: Mapping[datetime, float], moment: datetime, event_day: date, day: date, site: str
) -> float:
    """The value at the same wall-clock position relative to `day` as `moment` to the event day."""
    key = moment.replace(tzinfo=None) - (event_day - day)
    value = values.get(key)
    if value is None:
        raise BaselineError(site, f"no meter value at {key.isoformat()} (local time)")
    return value


def _actual(values: Mapping[datetime, float], moment: datetime, site: str) -> float:
    key = moment.replace(tzinfo=None)
    value = values.get(key)
    if value is None:
        raise BaselineError(
            site, f"no meter value at {key.isoformat()} (local time) for the same-day adjustment"
        )
    return value
