"""Interval metering: zero-order hold, split at boundaries, gaps left unfilled, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatch.series import Horizon
from vpp.domain import Measurement
from vpp.metering import IntervalMeter

T0 = datetime(2026, 7, 15, 0, 0, tzinfo=UTC)
QUARTER = timedelta(minutes=15)


def at(minutes: float, asset: str, power_kw: float) -> Measurement:
    return Measurement(asset, T0 + timedelta(minutes=minutes), power_kw)


def test_energy_is_held_and_split_across_interval_boundaries() -> None:
    meter = IntervalMeter({"a": "e1", "b": "e1"}, T0, QUARTER, max_gap_s=3600)
    # 400 kW from 10 to 20 min: 5 min in the first interval, 5 in the second
    meter.offer([at(10, "a", 400.0), at(20, "a", 0.0)])
    assert meter.energy_kwh(0)[0] == pytest.approx(400 * 5 / 60)
    assert meter.energy_kwh(1)[0] == pytest.approx(400 * 5 / 60)
    assert meter.energy_kwh(0)[1] == 0.0
    means = meter.mean_power_kw(Horizon(T0, QUARTER, 2))
    assert means["a"] == pytest.approx([400 * 5 / 15, 400 * 5 / 15])


def test_a_gap_longer_than_allowed_is_not_filled_and_unknown_assets_are_ignored() -> None:
    meter = IntervalMeter({"a": "e1"}, T0, QUARTER, max_gap_s=120)
    meter.offer([at(0, "a", 100.0), at(10, "a", 100.0), at(10, "ghost", 5.0)])
    assert meter.energy_kwh(0)[0] == 0.0
    meter.offer([at(11, "a", 100.0)])
    assert meter.energy_kwh(0)[0] == pytest.approx(100 / 60)


def test_prune_forgets_old_intervals() -> None:
    meter = IntervalMeter({"a": "e1"}, T0, QUARTER, max_gap_s=3600)
    meter.offer([at(0, "a", 60.0), at(30, "a", 60.0)])
    meter.prune(T0 + QUARTER)
    assert meter.energy_kwh(0)[0] == 0.0
    assert meter.energy_kwh(1)[0] == pytest.approx(15.0)
