"""Price series: reading the CSV, holding hourly prices over quarter-hours, synthetic days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dispatch.series import Horizon
from market.prices import PriceSeries, read_prices, synthetic_prices, write_prices
from vpp.errors import ConfigError

CST = timezone(timedelta(hours=8))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_hourly_prices_hold_over_their_quarter_hours(tmp_path: Path) -> None:
    rows = "\n".join(f"2025-06-04T{h:02d}:00:00+08:00,{p}" for h, p in enumerate([100, -45.5, 310]))
    series = read_prices(write(tmp_path, "timestamp,price\n" + rows + "\n"))
    assert series.interval == timedelta(hours=1)
    horizon = Horizon(datetime(2025, 6, 4, tzinfo=CST), timedelta(minutes=15), 12)
    prices = series.on(horizon)
    np.testing.assert_array_equal(prices, [100] * 4 + [-45.5] * 4 + [310] * 4)


def test_a_horizon_in_another_offset_finds_the_same_instants(tmp_path: Path) -> None:
    path = write(tmp_path, "2025-06-04T08:00:00+08:00,10\n2025-06-04T09:00:00+08:00,20\n")
    series = read_prices(path)
    utc = Horizon(datetime(2025, 6, 4, 1, tzinfo=UTC), timedelta(minutes=30), 2)
    np.testing.assert_array_equal(series.on(utc), [20, 20])


def test_a_horizon_beyond_the_series_is_reported(tmp_path: Path) -> None:
    series = read_prices(write(tmp_path, "2025-06-04T00:00:00+08:00,10\n"))
    horizon = Horizon(datetime(2025, 6, 4, tzinfo=CST), timedelta(minutes=15), 8)
    with pytest.raises(ConfigError, match="not the horizon"):
        series.on(horizon)


def test_every_bad_line_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "timestamp,price\n"
        "2025-06-04T00:00:00,10\n"  # no offset
        "2025-06-04T01:00:00+08:00,ten\n"
        "yesterday,5\n",
    )
    with pytest.raises(ConfigError) as caught:
        read_prices(path)
    lines = sorted((p.line, p.field) for p in caught.value.problems)
    assert lines == [(2, "timestamp"), (3, "price"), (4, "timestamp")]
    assert "no UTC offset" in str(caught.value)


def test_a_gap_in_the_series_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "2025-06-04T00:00:00+08:00,1\n2025-06-04T01:00:00+08:00,2\n2025-06-04T03:00:00+08:00,3\n",
    )
    with pytest.raises(ConfigError) as caught:
        read_prices(path)
    (problem,) = caught.value.problems
    assert problem.line == 3
    assert "steps by 1:00:00" in problem.message


def test_written_prices_read_back(tmp_path: Path) -> None:
    horizon = Horizon(datetime(2025, 6, 4, tzinfo=CST), timedelta(minutes=15), 96)
    prices = synthetic_prices(horizon, seed=3)
    path = tmp_path / "out.csv"
    write_prices(path, PriceSeries(horizon.start, horizon.interval, prices))
    np.testing.assert_allclose(read_prices(path).on(horizon), prices)


def test_synthetic_prices_are_reproducible_and_dip_at_midday() -> None:
    horizon = Horizon(datetime(2025, 6, 4, tzinfo=CST), timedelta(minutes=15), 96)
    first = synthetic_prices(horizon, seed=11)
    assert np.array_equal(first, synthetic_prices(horizon, seed=11))
    assert not np.array_equal(first, synthetic_prices(horizon, seed=12))
    evening = first[76:84].mean()  # 19:00-21:00 local
    midday = first[50:56].mean()  # 12:30-14:00 local
    night = first[8:16].mean()
    assert evening > night > midday
