"""Bid curves and DR offers: shaping by hand, solved curves whose optimum is known, market rules."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.bids import (
    BidOptions,
    DrOptions,
    build_bid_curves,
    build_dr_offers,
    non_increasing_fit,
    price_scenarios,
    sample_bid_points,
    shape_curve,
)
from dispatch.flexibility import AssetFlexibility, GroupLimits, build_envelope, combine
from dispatch.forecast import forecast_park
from dispatch.problem import build_problem
from dispatch.series import Horizon
from market.rules import DemandResponseRules, SpotMarketRules
from market.validate import dr_offer_errors, spot_bid_errors
from vpp.config import load_park
from vpp.config.schema import Park
from vpp.domain import Interval
from vpp.errors import ConfigError

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = datetime(2025, 6, 2, tzinfo=TZ)
QUARTER = timedelta(minutes=15)
INTERVAL = Interval(MONDAY, QUARTER)
EARLY = MONDAY - timedelta(days=3)  # before every gate closure


def spot(**fields: Any) -> SpotMarketRules:
    data: dict[str, Any] = {
        "id": "spot",
        "kind": "spot",
        "name": "Test spot",
        "currency": "CNY",
        "price_floor_per_mwh": -80,
        "price_cap_per_mwh": 1500,
        "max_bid_segments": 10,
        "min_segment_kw": 100,
        "min_aggregated_capacity_kw": 0,
        "require_full_day": False,
    }
    data.update(fields)
    return SpotMarketRules.model_validate(data)


def dr_rules(**fields: Any) -> DemandResponseRules:
    data: dict[str, Any] = {
        "id": "dr",
        "kind": "demand_response",
        "name": "Test DR",
        "currency": "CNY",
        "bid_price_cap_per_mwh": 3000,
        "min_response_kw": 100,
        "min_duration_min": 60,
        "max_duration_min": 240,
        "invitations": [{"kind": "day_ahead", "notice_min": 1440}],
    }
    data.update(fields)
    return DemandResponseRules.model_validate(data)


def steps_of(curve: Any) -> list[tuple[float, float]]:
    return [(s.price_up_to_per_mwh, s.power_kw) for s in curve.steps]


# --- shaping ----------------------------------------------------------------------------------


def test_steps_cut_at_midpoints_and_equal_powers_merge() -> None:
    curve = shape_curve(INTERVAL, [0, 100, 200, 300], [1000, 800, 800, 200], spot())
    assert steps_of(curve) == [(50.0, 1000.0), (250.0, 800.0), (1500.0, 200.0)]
    assert curve.power_at(-80) == 1000.0
    assert curve.power_at(120) == 800.0
    assert curve.power_at(1500) == 200.0


def test_rising_points_are_pooled_into_a_non_increasing_curve() -> None:
    curve = shape_curve(INTERVAL, [0, 100, 200], [500, 700, 100], spot())
    assert steps_of(curve) == [(150.0, 600.0), (1500.0, 100.0)]


def test_small_segments_merge_into_the_wider_step() -> None:
    # Drops of 50 and 450 kW; the 50 kW one is below the 100 kW minimum segment.
    curve = shape_curve(INTERVAL, [0, 100, 200], [1000, 950, 500], spot())
    assert steps_of(curve) == [(150.0, 1000.0), (1500.0, 500.0)]


def test_segment_count_is_capped() -> None:
    prices = [0, 100, 200, 300, 400]
    powers = [1000, 800, 500, 450, 0]
    curve = shape_curve(INTERVAL, prices, powers, spot(max_bid_segments=3, min_segment_kw=0))
    # Merge the closest neighbours first: 500/450, then 1000/800.
    assert len(curve.steps) == 3
    assert [s.power_kw for s in curve.steps] == [1000.0, 500.0, 0.0]


def test_too_little_range_becomes_a_flat_bid_at_the_reference() -> None:
    rules = spot(min_aggregated_capacity_kw=5000)
    curve = shape_curve(INTERVAL, [0, 100, 200], [900, 600, 300], rules, reference_power_kw=600)
    assert steps_of(curve) == [(1500.0, 600.0)]


def test_non_increasing_fit_by_hand() -> None:
    np.testing.assert_allclose(non_increasing_fit([1, 3, 2, 0]), [2, 2, 2, 0])
    np.testing.assert_allclose(non_increasing_fit([1, 3], [3, 1]), [1.5, 1.5])


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.floats(-500, 3000), st.floats(-5000, 5000)), min_size=1, max_size=15
    ),
    segments=st.integers(1, 12),
    min_segment=st.sampled_from([0.0, 10.0, 100.0, 1000.0]),
    min_capacity=st.sampled_from([0.0, 500.0, 5000.0]),
)
def test_shaped_curves_obey_the_market_rules(
    points: list[tuple[float, float]], segments: int, min_segment: float, min_capacity: float
) -> None:
    rules = spot(
        max_bid_segments=segments,
        min_segment_kw=min_segment,
        min_aggregated_capacity_kw=min_capacity,
    )
    prices = [p for p, _ in points]
    powers = [q for _, q in points]
    curve = shape_curve(INTERVAL, prices, powers, rules)
    assert spot_bid_errors([curve], rules, EARLY) == []
    assert curve.steps[-1].price_up_to_per_mwh == rules.price_cap_per_mwh
    grid = np.linspace(rules.price_floor_per_mwh, rules.price_cap_per_mwh, 50)
    assert np.all(np.diff([curve.power_at(p) for p in grid]) <= 0)
    # Every step's power lies within the sampled powers.
    assert min(powers) - 0.05 <= curve.steps[-1].power_kw
    assert curve.steps[0].power_kw <= max(powers) + 0.05


def test_scenarios_are_clipped_shifts_including_both_bounds() -> None:
    prices = np.array([100.0, 300.0, 500.0])
    scenarios = price_scenarios(prices, spot(), BidOptions(price_offsets_per_mwh=(-50.0, 50.0)))
    assert [s.tolist() for s in scenarios] == [
        [-80.0, -80.0, -80.0],
        [50.0, 250.0, 450.0],
        [100.0, 300.0, 500.0],
        [150.0, 350.0, 550.0],
        [1500.0, 1500.0, 1500.0],
    ]


# --- solved curves ----------------------------------------------------------------------------


def merit_park() -> Park:
    """A 1000 kW load that may shed 400 kW at 200/MWh and a 500 kW generator at 900/MWh."""
    return Park.model_validate(
        {
            "id": "p",
            "name": "Merit park",
            "location": {"latitude_deg": 31.23, "longitude_deg": 121.47},
            "grid_import_limit_kw": 5000,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {
                    "id": "e1",
                    "name": "E1",
                    "connection_limit_kw": 3000,
                    "assets": [
                        {
                            "id": "load",
                            "kind": "curtailable_load",
                            "profile": {"weekday_kw": [1000.0] * 24},
                            "max_reduction_kw": 400,
                            "max_duration_min": 1440,
                            "cost_per_mwh": 200,
                        },
                        {
                            "id": "gen",
                            "kind": "generator",
                            "max_kw": 500,
                            "fuel_cost_per_mwh": 900,
                            "emission_kg_per_kwh": 0.5,
                        },
                    ],
                }
            ],
        }
    )


def merit_problem(intervals: int = 4, price: float = 500.0) -> Any:
    park = merit_park()
    horizon = Horizon(MONDAY, QUARTER, intervals)
    return build_problem(park, horizon, np.full(intervals, price), forecast_park(park, horizon))


@pytest.mark.parametrize("warm", [True, False])
def test_solved_curve_follows_the_merit_order(warm: bool) -> None:
    # Scenarios at 100, 300, 500, 800 and 1100/MWh (no bound scenarios).
    options = BidOptions(
        price_offsets_per_mwh=(-400.0, -200.0, 300.0, 600.0), include_bounds=False, warm_start=warm
    )
    curves = build_bid_curves(merit_problem(), spot(), options=options)
    assert len(curves) == 4
    for curve in curves:
        # Below 200 draw 1000; shed 400 above it; run the generator above 900.
        assert steps_of(curve) == [(200.0, 1000.0), (950.0, 600.0), (1500.0, 100.0)]


def test_samples_report_every_solve() -> None:
    options = BidOptions(price_offsets_per_mwh=(-400.0, 600.0), include_bounds=False)
    samples = sample_bid_points(merit_problem(), spot(), options=options)
    assert samples.solves == 3
    assert samples.failed == ()
    assert samples.reference == 1
    np.testing.assert_allclose(samples.net_kw[0], 1000.0)
    np.testing.assert_allclose(samples.net_kw[1], 600.0)
    np.testing.assert_allclose(samples.net_kw[2], 100.0)
    assert samples.warm_solves == 3


@settings(max_examples=5, deadline=None)
@given(price=st.floats(0, 1400), offset=st.floats(10, 500))
def test_same_input_gives_the_same_curves(price: float, offset: float) -> None:
    options = BidOptions(price_offsets_per_mwh=(-offset, offset))
    first = build_bid_curves(merit_problem(2, price), spot(), options=options)
    second = build_bid_curves(merit_problem(2, price), spot(), options=options)
    assert first == second
    assert spot_bid_errors(first, spot(), EARLY) == []


def test_small_park_day_of_curves_passes_the_market_checks() -> None:
    loaded = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets")
    park = loaded.park
    horizon = Horizon(MONDAY, QUARTER, 96)
    hours = np.arange(96) / 4
    prices = 300 + 250 * np.sin((hours - 10) / 24 * 2 * np.pi)
    problem = build_problem(park, horizon, prices, forecast_park(park, horizon))
    options = BidOptions(price_offsets_per_mwh=(-100.0, 100.0), include_bounds=False)
    rules = loaded.spot.model_copy(update={"min_aggregated_capacity_kw": 0.0})
    curves = build_bid_curves(problem, rules, options=options)
    assert len(curves) == 96
    assert spot_bid_errors(curves, rules, EARLY) == []
    assert any(len(c.steps) > 1 for c in curves)  # the battery answers to price somewhere


# --- DR offers --------------------------------------------------------------------------------


def _flex(asset_id: str, down_kw: float, energy_kwh: float, cost: float, t: int) -> Any:
    return AssetFlexibility(
        asset_id,
        "e1",
        np.zeros(t),
        np.full(t, down_kw),
        np.full(t, np.inf),
        np.full(t, energy_kwh),
        down_cost_per_mwh=cost,
    )


def _envelope(assets: list[AssetFlexibility], t: int, baseline_kw: float = 5000.0) -> Any:
    horizon = Horizon(MONDAY, QUARTER, t)
    return combine(
        horizon,
        assets,
        {"e1": np.full(t, baseline_kw)},
        {"e1": GroupLimits(10_000, 0)},
        GroupLimits(10_000, 0),
    )


def test_dr_offer_is_priced_at_the_dearest_asset_needed() -> None:
    t = 8
    envelope = _envelope([_flex("load", 300, np.inf, 200, t), _flex("gen", 500, np.inf, 900, t)], t)
    offers = build_dr_offers(envelope, dr_rules())
    # One hour = 4 intervals: held from k = 0..4 only.
    assert [o.interval.start for o in offers] == [MONDAY + QUARTER * k for k in range(5)]
    assert {o.reduction_kw for o in offers} == {800.0}
    assert {o.price_per_mwh for o in offers} == {900.0}
    assert dr_offer_errors(offers, dr_rules(), EARLY) == []


def test_dr_offer_leaves_out_assets_above_the_price_cap() -> None:
    t = 8
    envelope = _envelope([_flex("load", 300, np.inf, 200, t), _flex("gen", 500, np.inf, 900, t)], t)
    offers = build_dr_offers(envelope, dr_rules(bid_price_cap_per_mwh=800))
    assert {(o.reduction_kw, o.price_per_mwh) for o in offers} == {(300.0, 200.0)}
    marked_up = build_dr_offers(
        envelope, dr_rules(), DrOptions(markup_per_mwh=50, min_price_per_mwh=600)
    )
    assert {o.price_per_mwh for o in marked_up} == {950.0}


def test_dr_offers_need_the_minimum_response_for_the_minimum_duration() -> None:
    t = 8
    # A battery with 380 kWh can hold 380 kW for one hour, 500 kW for 0.76 h only.
    envelope = _envelope([_flex("bat", 500, 380, 0, t)], t)
    assert {o.reduction_kw for o in build_dr_offers(envelope, dr_rules())} == {380.0}
    assert build_dr_offers(envelope, dr_rules(min_response_kw=400)) == []
    # Two hours needed but only eight 15-minute intervals: runs of 8 from k = 0 only; too short.
    assert build_dr_offers(envelope, dr_rules(min_duration_min=150)) == []


def test_increase_product_offers_negative_reductions() -> None:
    t = 6
    horizon = Horizon(MONDAY, QUARTER, t)
    battery = AssetFlexibility(
        "bat",
        "e1",
        np.full(t, 400.0),
        np.zeros(t),
        np.full(t, 1000.0),
        np.zeros(t),
    )
    envelope = combine(
        horizon, [battery], {"e1": np.zeros(t)}, {"e1": GroupLimits(300, 0)}, GroupLimits(1e4, 0)
    )
    rules = dr_rules(direction="increase", min_duration_min=30)
    offers = build_dr_offers(envelope, rules)
    assert {o.reduction_kw for o in offers} == {-300.0}  # the enterprise connection binds
    assert len(offers) == 5
    assert dr_offer_errors(offers, rules, EARLY) == []


def test_small_park_dr_offers_pass_the_product_checks() -> None:
    loaded = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets")
    assert loaded.dr is not None
    park = loaded.park
    horizon = Horizon(MONDAY, QUARTER, 96)
    problem = build_problem(park, horizon, np.full(96, 400.0), forecast_park(park, horizon))
    envelope = build_envelope(problem)
    # The product asks 1 MW; the small park cannot hold that much for an hour.
    assert build_dr_offers(envelope, loaded.dr) == []
    rules = loaded.dr.model_copy(update={"min_response_kw": 200.0})
    offers = build_dr_offers(envelope, rules)
    assert offers
    assert dr_offer_errors(offers, rules, EARLY) == []
    held = envelope.park.down_for(4)
    for offer in offers:
        k = horizon.index_of(offer.interval.start)
        assert offer.reduction_kw == pytest.approx(held[k])


# --- command line -----------------------------------------------------------------------------


def test_cli_writes_a_valid_submission_and_a_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from market.formats import read_submission
    from market.prices import PriceSeries, write_prices
    from vpp.cli import main

    loaded = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets")
    day_start = datetime(2026, 3, 10, tzinfo=TZ)
    hours = np.arange(96) / 4
    prices = PriceSeries(day_start, QUARTER, 300 + 250 * np.sin((hours - 10) / 24 * 2 * np.pi))
    price_file = tmp_path / "prices.csv"
    write_prices(price_file, prices)
    out = tmp_path / "bids.json"
    code = main(
        [
            "bids",
            "--config",
            "tests/fixtures/small_park.yaml",
            "--markets",
            "config/markets",
            "--prices",
            str(price_file),
            "--out",
            str(out),
            "--day",
            "2026-03-10",
            "--offsets=-100,100",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["curves"] == 96
    assert summary["solves"] == 5  # two offsets, the forecast, the floor and the cap
    assert summary["failed_scenarios"] == []
    submission = read_submission(out)
    assert submission.market == "cn_provincial_spot"
    assert submission.participant == "small"
    assert [c.interval.start for c in submission.bid_curves] == [
        day_start + QUARTER * k for k in range(96)
    ]
    before_gate = datetime(2026, 3, 9, 8, 0, tzinfo=TZ)
    assert spot_bid_errors(submission.bid_curves, loaded.spot, before_gate) == []


def test_cli_refuses_bad_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vpp.cli import main

    code = main(
        [
            "bids",
            "--config",
            "tests/fixtures/small_park.yaml",
            "--markets",
            "config/markets",
            "--out",
            str(tmp_path / "bids.json"),
            "--offsets",
            "cheap",
        ]
    )
    assert code == 2
    assert "--offsets" in capsys.readouterr().err
    assert not (tmp_path / "bids.json").exists()


def test_cli_history_needs_offsets_and_feeds_the_forecast(tmp_path: Path) -> None:
    from vpp.commands.bids import read_history

    good = tmp_path / "history.csv"
    good.write_text(
        "timestamp,load-a,site-meter\n"
        "2026-03-09T00:00:00+08:00,400.5,1\n"
        "2026-03-09T00:15:00+08:00,,2\n",
        encoding="utf-8",
    )
    frame = read_history(good)
    assert list(frame.columns) == ["load-a", "site-meter"]
    assert frame.index[0] == datetime(2026, 3, 9, tzinfo=TZ)
    assert frame["load-a"].iloc[0] == 400.5
    assert np.isnan(frame["load-a"].iloc[1])
    bad = tmp_path / "naive.csv"
    bad.write_text("timestamp,load-a\n2026-03-09T00:00:00+08:00,1\n2026-03-09T00:15:00,2\n")
    with pytest.raises(ConfigError) as caught:
        read_history(bad)
    assert str(caught.value) == f"{bad}:3: timestamp: timestamp has no UTC offset (e.g. +08:00)"
