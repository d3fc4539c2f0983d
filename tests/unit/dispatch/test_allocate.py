"""Allocation of a park power change over assets: hand-computed cases and invariants."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.allocate import allocate


def test_cheapest_tier_moves_first_and_alone_when_it_suffices() -> None:
    # Two cheap assets (cost 1) with 100 and 300 kW of upward headroom, one dear (cost 5).
    result = allocate([0, 0, 0], [0, 0, 0], [100, 300, 500], [1, 1, 5], 200.0)
    # 200 kW of the cheap tier's 400: each cheap asset moves half its headroom.
    assert result.power_kw.tolist() == pytest.approx([50.0, 150.0, 0.0])
    assert result.allocated_kw == pytest.approx(200.0)
    assert not result.saturated


def test_dearer_tier_takes_the_rest() -> None:
    result = allocate([0, 0, 0], [0, 0, 0], [100, 300, 500], [1, 1, 5], 650.0)
    assert result.power_kw.tolist() == pytest.approx([100.0, 300.0, 250.0])


def test_downward_change_uses_room_below_current() -> None:
    # Batteries at +50 and -20 kW may go down to -100; a generator at -200 may go to -400.
    result = allocate([50, -20, -200], [-100, -100, -400], [100, 100, -100], [2, 2, 9], -300.0)
    # Cheap tier headroom down: 150 + 80 = 230 (all used), generator gives the other 70.
    assert result.power_kw.tolist() == pytest.approx([-100.0, -100.0, -270.0])
    assert result.allocated_kw == pytest.approx(-300.0)


def test_beyond_headroom_saturates_every_asset() -> None:
    result = allocate([10, 20], [0, 0], [50, 40], [1, 2], 1000.0)
    assert result.power_kw.tolist() == [50.0, 40.0]
    assert result.saturated
    assert result.shortfall_kw == pytest.approx(1000.0 - 60.0)


def test_current_outside_new_limits_is_pulled_in_first() -> None:
    # Asset 0 runs at 80 but may now only draw up to 60: that alone is a -20 kW change.
    result = allocate([80, 0], [0, 0], [60, 100], [1, 1], -20.0)
    assert result.power_kw.tolist() == pytest.approx([60.0, 0.0])
    # Asking for no change then means asset 1 makes up the 20 kW.
    result = allocate([80, 0], [0, 0], [60, 100], [1, 1], 0.0)
    assert result.power_kw.tolist() == pytest.approx([60.0, 20.0])


def test_tier_width_groups_close_costs() -> None:
    result = allocate([0, 0], [0, 0], [100, 100], [10.0, 14.0], 100.0, tier_width=10.0)
    assert result.power_kw.tolist() == pytest.approx([50.0, 50.0])
    result = allocate([0, 0], [0, 0], [100, 100], [10.0, 14.0], 100.0)
    assert result.power_kw.tolist() == pytest.approx([100.0, 0.0])


def test_zero_change_keeps_assets_where_they_are() -> None:
    result = allocate([5, -3], [-10, -10], [10, 10], [1, 1], 0.0)
    assert result.power_kw.tolist() == [5.0, -3.0]


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(ValueError, match="lower_kw exceed"):
        allocate([0], [1], [0], [0], 1.0)
    with pytest.raises(ValueError, match="one length"):
        allocate([0, 1], [0], [1], [0], 1.0)
    with pytest.raises(ValueError, match="finite"):
        allocate([0], [0], [1], [0], float("nan"))


def test_empty_fleet_allocates_nothing() -> None:
    result = allocate([], [], [], [], 10.0)
    assert result.power_kw.shape == (0,)
    assert result.saturated


@st.composite
def fleets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    n = draw(st.integers(1, 40))
    value = st.floats(-1000, 1000, allow_nan=False, allow_subnormal=False)
    a = np.array(draw(st.lists(value, min_size=n, max_size=n)))
    b = np.array(draw(st.lists(value, min_size=n, max_size=n)))
    lower, upper = np.minimum(a, b), np.maximum(a, b)
    current = np.array(draw(st.lists(value, min_size=n, max_size=n)))
    costs = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 2.5, 7.0]), min_size=n, max_size=n)))
    change = draw(st.floats(-50_000, 50_000, allow_nan=False, allow_subnormal=False))
    return current, lower, upper, costs, change


@given(fleets())
@settings(max_examples=300, deadline=None)
def test_result_within_limits_and_hits_change_or_saturates(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
) -> None:
    current, lower, upper, costs, change = case
    result = allocate(current, lower, upper, costs, change)
    assert np.all(result.power_kw >= lower)
    assert np.all(result.power_kw <= upper)
    low_room = float(lower.sum() - current.sum())
    high_room = float(upper.sum() - current.sum())
    tolerance = 1e-6 * max(1.0, abs(change), float(np.abs(current).sum()), float(upper.sum()))
    if low_room <= change <= high_room:
        assert result.allocated_kw == pytest.approx(change, abs=tolerance)
    elif change > high_room:
        assert np.allclose(result.power_kw, upper)
    else:
        assert np.allclose(result.power_kw, lower)


@given(fleets())
@settings(max_examples=200, deadline=None)
def test_a_dearer_asset_moves_only_when_every_cheaper_one_is_at_its_bound(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
) -> None:
    current, lower, upper, costs, change = case
    result = allocate(current, lower, upper, costs, change)
    base = np.clip(current, lower, upper)
    moved = np.abs(result.power_kw - base) > 1e-6
    if not moved.any():
        return
    dearest_moved = costs[moved].max()
    cheaper = costs < dearest_moved
    bound = upper if result.power_kw.sum() >= base.sum() else lower
    assert np.allclose(result.power_kw[cheaper], bound[cheaper], atol=1e-6)


def test_ten_thousand_assets_allocate_in_a_few_milliseconds() -> None:
    rng = np.random.default_rng(1)
    n = 10_000
    lower = -rng.uniform(0, 500, n)
    upper = rng.uniform(0, 500, n)
    current = rng.uniform(lower, upper)
    costs = rng.choice([0.0, 50.0, 120.0, 900.0], n)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        allocate(current, lower, upper, costs, 123_456.0)
        best = min(best, time.perf_counter() - start)
    assert best < 0.02
