"""Bid checks: a valid day passes, and every rule broken once gives its own clear error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from market.rules import DemandResponseRules, SpotMarketRules
from market.validate import (
    BidError,
    BidRule,
    check_dr_offers,
    check_spot_bids,
    day_intervals,
    dr_offer_errors,
    spot_bid_errors,
)
from vpp.config.loader import load_rule_set
from vpp.domain import BidCurve, BidStep, DrOffer, Interval

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 3, 10)
BEFORE_GATE = datetime(2026, 3, 9, 9, 0, tzinfo=SHANGHAI)


def _spot() -> SpotMarketRules:
    rules = load_rule_set(Path("config/markets/cn_provincial_spot.yaml"))
    assert isinstance(rules, SpotMarketRules)
    return rules


def _dr() -> DemandResponseRules:
    rules = load_rule_set(Path("config/markets/cn_peak_valley_dr.yaml"))
    assert isinstance(rules, DemandResponseRules)
    return rules


STEPS = (BidStep(0.0, 8000.0), BidStep(500.0, 5000.0), BidStep(1500.0, 2000.0))


def _day_curves(rules: SpotMarketRules, day: date = DAY) -> list[BidCurve]:
    return [BidCurve(interval, STEPS) for interval in day_intervals(day, rules)]


def _offers(start_hour: int = 18, count: int = 8) -> list[DrOffer]:
    start = datetime(2026, 3, 10, start_hour, tzinfo=SHANGHAI)
    return [
        DrOffer(Interval(start + timedelta(minutes=15 * k), timedelta(minutes=15)), 1500.0, 800.0)
        for k in range(count)
    ]


def test_a_full_valid_day_passes() -> None:
    rules = _spot()
    curves = _day_curves(rules)
    assert len(curves) == 96
    assert spot_bid_errors(curves, rules, BEFORE_GATE) == []
    check_spot_bids(curves, rules, BEFORE_GATE)


def test_a_fixed_one_step_schedule_is_exempt_from_the_capacity_minimum() -> None:
    rules = _spot()
    curves = [replace(c, steps=(BidStep(1500.0, 300.0),)) for c in _day_curves(rules)]
    assert spot_bid_errors(curves, rules, BEFORE_GATE) == []


def _with(index: int, steps: tuple[BidStep, ...]) -> Callable[[list[BidCurve]], list[BidCurve]]:
    def change(curves: list[BidCurve]) -> list[BidCurve]:
        curves[index] = replace(curves[index], steps=steps)
        return curves

    return change


def _shift(curves: list[BidCurve]) -> list[BidCurve]:
    first = curves[0].interval
    curves[0] = replace(
        curves[0], interval=Interval(first.start + timedelta(minutes=5), first.length)
    )
    return curves


def _lengthen(curves: list[BidCurve]) -> list[BidCurve]:
    first = curves[0].interval
    curves[0] = replace(curves[0], interval=Interval(first.start, timedelta(minutes=30)))
    return curves


SLOT = datetime(2026, 3, 10, 0, 15, tzinfo=SHANGHAI)  # start of the curve at index 1


@pytest.mark.parametrize(
    ("change", "rule", "at", "message"),
    [
        (_with(1, ()), BidRule.EMPTY, SLOT, "the curve has no step"),
        (
            _with(1, (BidStep(0.0, float("nan")),)),
            BidRule.NOT_FINITE,
            SLOT,
            "a price or power is NaN or infinite",
        ),
        (
            _with(1, tuple(BidStep(100.0 * k, 12000.0 - 1000.0 * k) for k in range(11))),
            BidRule.SEGMENTS,
            SLOT,
            "11 segments, at most 10 allowed",
        ),
        (
            _with(1, (BidStep(500.0, 8000.0), BidStep(500.0, 2000.0))),
            BidRule.PRICE_ORDER,
            SLOT,
            "step 1 price 500.0 is not above step 0 price 500.0",
        ),
        (
            _with(1, (BidStep(0.0, 2000.0), BidStep(500.0, 9000.0), BidStep(1000.0, -4000.0))),
            BidRule.MONOTONE,
            SLOT,
            "step 1 power 9000.0 kW rises above step 0 power 2000.0 kW at a higher price",
        ),
        (
            _with(1, (BidStep(-100.0, 8000.0), BidStep(1500.0, 2000.0))),
            BidRule.PRICE_FLOOR,
            SLOT,
            "step 0 price -100.0 is below the floor -80.0 CNY/MWh",
        ),
        (
            _with(1, (BidStep(0.0, 8000.0), BidStep(1600.0, 2000.0))),
            BidRule.PRICE_CAP,
            SLOT,
            "step 1 price 1600.0 is above the cap 1500.0 CNY/MWh",
        ),
        (
            _with(1, (BidStep(0.0, 8000.0), BidStep(500.0, 7950.0), BidStep(1500.0, 2000.0))),
            BidRule.MIN_SEGMENT,
            SLOT,
            "step 1 moves 50 kW, less than the 100 kW minimum segment",
        ),
        (
            _with(1, (BidStep(0.0, 4000.0), BidStep(1500.0, 2000.0))),
            BidRule.MIN_CAPACITY,
            SLOT,
            "the curve offers 2000 kW of flexibility, less than the 5000 kW minimum aggregated "
            "capacity",
        ),
        (
            _lengthen,
            BidRule.INTERVAL_LENGTH,
            datetime(2026, 3, 10, tzinfo=SHANGHAI),
            "interval lasts 30 min, the market uses 15 min",
        ),
        (
            lambda curves: [*curves, curves[5]],
            BidRule.DUPLICATE,
            datetime(2026, 3, 10, 1, 15, tzinfo=SHANGHAI),
            "a second bid for this interval",
        ),
        (
            lambda curves: curves[:50] + curves[51:],
            BidRule.FULL_DAY,
            datetime(2026, 3, 10, 12, 30, tzinfo=SHANGHAI),
            "2026-03-10 has 95 of its 96 intervals; the first missing one starts "
            "2026-03-10T12:30:00+08:00",
        ),
    ],
    ids=lambda value: value.value if isinstance(value, BidRule) else "",
)
def test_every_spot_rule_broken_once_gives_its_error(
    change: Callable[[list[BidCurve]], list[BidCurve]], rule: BidRule, at: datetime, message: str
) -> None:
    rules = _spot()
    curves = change(_day_curves(rules))
    errors = spot_bid_errors(curves, rules, BEFORE_GATE)
    assert [e.rule for e in errors] == [rule]
    error = errors[0]
    assert error.interval is not None
    assert error.interval.start == at
    assert error.detail == message
    assert str(error) == f"cn_provincial_spot interval {at.isoformat()}: {rule.value}: {message}"
    with pytest.raises(BidError, match=rule.value):
        check_spot_bids(curves, rules, BEFORE_GATE)


def test_a_misaligned_interval_is_refused() -> None:
    rules = _spot()
    errors = spot_bid_errors(_shift(_day_curves(rules)), rules, BEFORE_GATE)
    # Shifting one interval also leaves its grid slot empty.
    assert [e.rule for e in errors] == [BidRule.INTERVAL_ALIGNMENT, BidRule.FULL_DAY]
    assert errors[0].detail == (
        "interval does not start on the market's 15-min grid (00:05:00 Asia/Shanghai)"
    )


def test_a_bid_after_gate_closure_is_refused() -> None:
    rules = _spot()
    late = datetime(2026, 3, 9, 9, 31, tzinfo=SHANGHAI)
    errors = spot_bid_errors(_day_curves(rules), rules, late)
    assert [e.rule for e in errors] == [BidRule.GATE_CLOSURE]
    assert errors[0].detail == (
        "submitted 2026-03-09T09:31:00+08:00, after the gate for 2026-03-10 closed at "
        "2026-03-09T09:30:00+08:00"
    )
    on_time = datetime(2026, 3, 9, 1, 30, tzinfo=ZoneInfo("UTC"))  # 09:30 in Shanghai
    assert spot_bid_errors(_day_curves(rules), rules, on_time) == []


def test_an_empty_submission_is_refused() -> None:
    errors = spot_bid_errors([], _spot(), BEFORE_GATE)
    assert [e.rule for e in errors] == [BidRule.EMPTY]
    assert errors[0].interval is None
    assert str(errors[0]) == "cn_provincial_spot: empty: the submission holds no bid curve"


def test_a_naive_submission_time_is_a_programming_error() -> None:
    naive = datetime(2026, 3, 9, 9)  # noqa: DTZ001 - the naive time under test
    curves = _day_curves(_spot())
    with pytest.raises(ValueError, match="timezone-aware"):
        spot_bid_errors(curves, _spot(), naive)


def test_a_dst_day_in_new_york_has_23_hourly_intervals() -> None:
    rules = load_rule_set(Path("config/markets/us_pjm_energy.yaml"))
    assert isinstance(rules, SpotMarketRules)
    day = date(2026, 3, 8)
    curves = [
        BidCurve(i, (BidStep(0.0, 500.0), BidStep(100.0, 300.0), BidStep(2000.0, 0.0)))
        for i in day_intervals(day, rules)
    ]
    assert len(curves) == 23
    submitted = datetime(2026, 3, 7, 10, tzinfo=ZoneInfo("America/New_York"))
    assert spot_bid_errors(curves, rules, submitted) == []


DR_AT = datetime(2026, 3, 10, 18, tzinfo=SHANGHAI)


def _offer_with(
    reduction_kw: float | None = None, price_per_mwh: float | None = None
) -> Callable[[list[DrOffer]], list[DrOffer]]:
    def change(offers: list[DrOffer]) -> list[DrOffer]:
        first = offers[0]
        offers[0] = replace(
            first,
            reduction_kw=first.reduction_kw if reduction_kw is None else reduction_kw,
            price_per_mwh=first.price_per_mwh if price_per_mwh is None else price_per_mwh,
        )
        return offers

    return change


@pytest.mark.parametrize(
    ("change", "rule", "message"),
    [
        (
            _offer_with(reduction_kw=float("inf")),
            BidRule.NOT_FINITE,
            "reduction or price is NaN or infinite",
        ),
        (
            _offer_with(reduction_kw=0.0),
            BidRule.DIRECTION,
            "reduction_kw 0 must be non-zero for a both product",
        ),
        (
            _offer_with(reduction_kw=900.0),
            BidRule.MIN_RESPONSE,
            "900 kW is below the 1000 kW minimum response",
        ),
        (_offer_with(price_per_mwh=-1.0), BidRule.PRICE_FLOOR, "price -1.0 CNY/MWh is negative"),
        (
            _offer_with(price_per_mwh=3500.0),
            BidRule.PRICE_CAP,
            "price 3500.0 is above the bid cap 3000.0 CNY/MWh",
        ),
        (
            lambda offers: offers[:3],
            BidRule.MIN_DURATION,
            "offers run for 45 min, less than the 60 min minimum duration",
        ),
        (
            lambda offers: [
                replace(offers[0], interval=Interval(DR_AT, timedelta(minutes=60))),
                *offers[4:],
            ],
            BidRule.INTERVAL_LENGTH,
            "interval lasts 60 min, the market uses 15 min",
        ),
    ],
    ids=lambda value: value.value if isinstance(value, BidRule) else "",
)
def test_every_dr_rule_broken_once_gives_its_error(
    change: Callable[[list[DrOffer]], list[DrOffer]], rule: BidRule, message: str
) -> None:
    rules = _dr()
    offers = change(_offers())
    errors = dr_offer_errors(offers, rules, BEFORE_GATE)
    assert [e.rule for e in errors] == [rule]
    assert errors[0].interval is not None
    assert errors[0].interval.start == DR_AT
    assert errors[0].detail == message
    with pytest.raises(BidError, match=rule.value):
        check_dr_offers(offers, rules, BEFORE_GATE)


def test_valid_dr_offers_pass_and_late_ones_are_refused() -> None:
    rules = _dr()
    assert dr_offer_errors(_offers(), rules, BEFORE_GATE) == []
    late = datetime(2026, 3, 9, 12, 1, tzinfo=SHANGHAI)
    errors = dr_offer_errors(_offers(), rules, late)
    assert [e.rule for e in errors] == [BidRule.GATE_CLOSURE]


def test_a_reduction_only_product_refuses_an_increase_offer() -> None:
    rules = load_rule_set(Path("config/markets/us_pjm_economic_dr.yaml"))
    assert isinstance(rules, DemandResponseRules)
    ny = ZoneInfo("America/New_York")
    start = datetime(2026, 7, 14, 14, tzinfo=ny)
    offers = [DrOffer(Interval(start, timedelta(hours=1)), -500.0, 100.0)]
    errors = dr_offer_errors(offers, rules, datetime(2026, 7, 13, 9, tzinfo=ny))
    assert [e.rule for e in errors] == [BidRule.DIRECTION]
    assert errors[0].detail == "reduction_kw -500 must be positive for a reduction product"
