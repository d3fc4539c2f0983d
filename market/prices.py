"""Energy price series: read from a `timestamp,price` CSV, or a seeded synthetic day-ahead shape.

Prices are in currency per MWh, one value per interval starting at its timestamp. A series is
put on a horizon's grid by holding each value over its interval (an hourly series covers its
four quarter-hours). Negative prices are valid values, not errors.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from dispatch.series import FloatArray, Horizon
from vpp.errors import ConfigError, Problem

MAX_ABS_PRICE_PER_MWH = 100_000.0


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """Regular prices: `price_per_mwh[k]` holds over [start + k·interval, start + (k+1)·interval)."""

    start: datetime
    interval: timedelta
    price_per_mwh: FloatArray
    source: str = ""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("PriceSeries.start must be timezone-aware")
        if self.interval <= timedelta(0):
            raise ValueError("PriceSeries.interval must be positive")

    @property
    def end(self) -> datetime:
        return self.start + self.interval * len(self.price_per_mwh)

    def on(self, horizon: Horizon) -> FloatArray:
        """The price of every interval of `horizon`, holding each value over its interval.

        Raises ConfigError if the series does not cover the horizon.
        """
        if horizon.start < self.start or horizon.end > self.end:
            raise ConfigError(
                [
                    Problem(
                        self.source or "prices",
                        None,
                        "timestamp",
                        f"prices cover {self.start.isoformat()} to {self.end.isoformat()}, "
                        f"not the horizon {horizon.start.isoformat()} to "
                        f"{horizon.end.isoformat()}",
                    )
                ]
            )
        index = [int((s - self.start) // self.interval) for s in horizon.starts()]
        return np.asarray(self.price_per_mwh[index], dtype=np.float64)


def read_prices(path: Path | str) -> PriceSeries:
    """Read a `timestamp,price` CSV (ISO 8601 with offset; header optional).

    Every problem is reported with its line: a timestamp without offset, a price that is not a
    number, an irregular or unordered series.
    """
    path = Path(path)
    name = str(path)
    problems: list[Problem] = []
    stamps: list[datetime] = []
    values: list[float] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise ConfigError([Problem(name, None, "", f"cannot read: {err.strerror}")]) from err
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            problems.append(Problem(name, line, "", "expected 'timestamp,price'"))
            continue
        text, price_text = row[0].strip(), row[1].strip()
        if line == 1 and text.lower() in ("timestamp", "time", "interval_start"):
            continue
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            problems.append(Problem(name, line, "timestamp", f"{text!r} is not ISO 8601"))
            continue
        if stamp.tzinfo is None:
            problems.append(
                Problem(name, line, "timestamp", f"{text!r} has no UTC offset (e.g. +08:00)")
            )
            continue
        try:
            price = float(price_text)
        except ValueError:
            problems.append(Problem(name, line, "price", f"{price_text!r} is not a number"))
            continue
        if not math.isfinite(price) or abs(price) > MAX_ABS_PRICE_PER_MWH:
            problems.append(Problem(name, line, "price", f"{price_text} is out of range"))
            continue
        stamps.append(stamp)
        values.append(price)
    if not problems and not stamps:
        problems.append(Problem(name, None, "", "no prices"))
    if problems:
        raise ConfigError(problems)
    steps = {b - a for a, b in itertools.pairwise(stamps)}
    interval = min(steps) if steps else timedelta(hours=1)
    for k, (a, b) in enumerate(itertools.pairwise(stamps)):
        if b - a != interval:
            problems.append(
                Problem(
                    name,
                    _line_of(rows, k + 1),
                    "timestamp",
                    f"{b.isoformat()} follows {a.isoformat()} after {b - a}, "
                    f"the series steps by {interval}",
                )
            )
            break
    if problems:
        raise ConfigError(problems)
    return PriceSeries(stamps[0], interval, np.array(values, dtype=np.float64), source=name)


def _line_of(rows: list[list[str]], data_index: int) -> int | None:
    """File line of the data_index-th data row (header and blank lines skipped)."""
    seen = -1
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if line == 1 and row[0].strip().lower() in ("timestamp", "time", "interval_start"):
            continue
        seen += 1
        if seen == data_index:
            return line
    return None


def write_prices(path: Path | str, series: PriceSeries) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "price"])
        for k, price in enumerate(series.price_per_mwh):
            writer.writerow([(series.start + series.interval * k).isoformat(), f"{price:.2f}"])


def synthetic_prices(
    horizon: Horizon,
    seed: int = 0,
    *,
    mean_per_mwh: float = 420.0,
    midday_dip_per_mwh: float = 380.0,
    noise_per_mwh: float = 25.0,
    local_offset_h: float = 8.0,
) -> FloatArray:
    """A day-ahead price shape for a solar-heavy provincial market, reproducible from `seed`.

    Low at night, a morning ramp, a midday solar trough that can go negative, and an evening
    peak; each day gets its own random scale and the intervals a little noise.
    """
    rng = np.random.default_rng(seed)
    hours = np.array([(s.timestamp() / 3600.0 + local_offset_h) % 24.0 for s in horizon.starts()])
    days = np.array([int((s - horizon.start).total_seconds() // 86400) for s in horizon.starts()])
    n_days = int(days.max()) + 1
    scale = rng.uniform(0.85, 1.15, n_days)[days]
    dip = midday_dip_per_mwh * rng.uniform(0.7, 1.3, n_days)[days]

    def bump(centre: float, width: float) -> FloatArray:
        distance = np.minimum(np.abs(hours - centre), 24 - np.abs(hours - centre))
        return np.asarray(np.exp(-0.5 * (distance / width) ** 2))

    shape = mean_per_mwh * (0.55 + 0.35 * bump(9.0, 1.5) + 0.9 * bump(19.5, 1.8)) - dip * bump(
        13.0, 1.8
    )
    prices = scale * shape + rng.normal(0.0, noise_per_mwh, hours.size)
    return np.asarray(np.round(prices, 2), dtype=np.float64)
