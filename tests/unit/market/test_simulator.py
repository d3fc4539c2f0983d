"""Market simulator: price-taker clearing at a uniform price, DR calls and their notice times."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from market.formats import Submission
from market.rules import DemandResponseRules, SpotMarketRules
from market.simulator import (
    ClearingError,
    DrCall,
    MarketSimulator,
    clear_spot,
    dr_calls_from_prices,
    issue_dr_events,
)
from market.validate import BidError, BidRule, day_intervals
from vpp.config.loader import load_rule_set
from vpp.domain import BidCurve, BidStep, DrOffer, Interval

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 3, 10)
Q = timedelta(minutes=15)
STEPS = (BidStep(0.0, 8000.0), BidStep(500.0, 5000.0), BidStep(1500.0, 2000.0))


def _spot() -> SpotMarketRules:
    rules = load_rule_set(Path("config/markets/cn_provincial_spot.yaml"))
    assert isinstance(rules, SpotMarketRules)
    return rules


def _dr() -> DemandResponseRules:
    rules = load_rule_set(Path("config/markets/cn_peak_valley_dr.yaml"))
    assert isinstance(rules, DemandResponseRules)
    return rules


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, 10, hour, minute, tzinfo=SHANGHAI)


def test_each_interval_clears_at_its_price_on_the_curve() -> None:
    rules = _spot()
    curves = [BidCurve(Interval(_at(0) + Q * k, Q), STEPS) for k in range(5)]
    prices = {
        _at(0, 0): -20.0,
        _at(0, 15): 0.0,
        _at(0, 30): 300.0,
        _at(0, 45): 500.01,
        _at(1): 1500.0,
    }
    awards = clear_spot(curves, prices, rules)
    assert [a.power_kw for a in awards] == [8000.0, 8000.0, 5000.0, 2000.0, 2000.0]
    assert [a.price_per_mwh for a in awards] == [-20.0, 0.0, 300.0, 500.01, 1500.0]
    assert {a.market for a in awards} == {"cn_provincial_spot"}
    assert [a.interval for a in awards] == [c.interval for c in curves]


def test_a_missing_price_is_a_clearing_error() -> None:
    rules = _spot()
    curve = BidCurve(Interval(_at(3), Q), STEPS)
    with pytest.raises(ClearingError, match=r"interval 2026-03-10T03:00:00\+08:00: no clearing"):
        clear_spot([curve], {}, rules)


def test_prices_keyed_in_another_timezone_match_the_same_instants() -> None:
    rules = _spot()
    curve = BidCurve(Interval(_at(8), Q), STEPS)
    utc_key = _at(8).astimezone(ZoneInfo("UTC"))
    (award,) = clear_spot([curve], {utc_key: 600.0}, rules)
    assert award.power_kw == 2000.0


def _day_submission(submitted_at: datetime) -> Submission:
    rules = _spot()
    curves = tuple(BidCurve(i, STEPS) for i in day_intervals(DAY, rules))
    return Submission("cn_provincial_spot", "demo-park", submitted_at, bid_curves=curves)


def test_the_simulator_checks_then_clears_a_day() -> None:
    rules = _spot()
    prices = {i.start: 100.0 * (k % 20) for k, i in enumerate(day_intervals(DAY, rules))}
    simulator = MarketSimulator(rules, prices)
    result = simulator.submit(_day_submission(datetime(2026, 3, 9, 9, tzinfo=SHANGHAI)))
    assert len(result.awards) == 96
    assert result.participant == "demo-park"
    # Prices 0 → 8000 kW; 100..500 → 5000 kW; 600..1500 → 2000 kW.
    expected = [8000.0 if p <= 0 else 5000.0 if p <= 500 else 2000.0 for p in prices.values()]
    assert [a.power_kw for a in result.awards] == expected


def test_the_simulator_refuses_a_late_submission_before_clearing() -> None:
    simulator = MarketSimulator(_spot(), {})  # no prices: clearing would fail differently
    with pytest.raises(BidError) as caught:
        simulator.submit(_day_submission(datetime(2026, 3, 9, 10, tzinfo=SHANGHAI)))
    assert caught.value.rule is BidRule.GATE_CLOSURE


def _offers(
    price: float = 800.0, kw: tuple[float, ...] = (1500, 1400, 1600, 1500)
) -> list[DrOffer]:
    return [DrOffer(Interval(_at(18, 15 * k), Q), r, price) for k, r in enumerate(kw)]


def test_a_day_ahead_call_becomes_an_event_with_its_notice_time() -> None:
    rules = _dr()
    call = DrCall(_at(18), _at(19), "day_ahead", 900.0)
    (event,) = issue_dr_events(_offers(), [call], rules)
    assert event.event_id == "cn_peak_valley_dr-20260310T1800"
    assert (event.start, event.end) == (_at(18), _at(19))
    assert event.notified_at == datetime(2026, 3, 9, 18, tzinfo=SHANGHAI)  # 1440 min before
    assert event.reduction_kw == 1400.0  # what the park can hold in every interval
    assert event.price_per_mwh == 900.0
    assert event.invitation == "day_ahead"


def test_an_emergency_call_is_notified_30_minutes_ahead() -> None:
    (event,) = issue_dr_events(_offers(), [DrCall(_at(18), _at(19), "emergency", 900.0)], _dr())
    assert event.notified_at == _at(17, 30)


def test_a_call_below_the_offer_price_or_not_covered_issues_nothing() -> None:
    rules = _dr()
    assert issue_dr_events(_offers(), [DrCall(_at(18), _at(19), "day_ahead", 700.0)], rules) == ()
    # The offers stop at 19:00; a call to 19:15 is not covered in full.
    late = DrCall(_at(18, 15), _at(19, 15), "day_ahead", 900.0)
    assert issue_dr_events(_offers(), [late], rules) == ()


def test_an_increase_call_takes_negative_offers() -> None:
    offers = _offers(kw=(-1200, -1300, -1200, -1500))
    call = DrCall(_at(18), _at(19), "day_ahead", 900.0, direction="increase")
    (event,) = issue_dr_events(offers, [call], _dr())
    assert event.reduction_kw == -1200.0


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        (
            [DrCall(_at(18), _at(19), "intraday", 900.0)],
            "the product has no intraday invitation (only day_ahead, emergency)",
        ),
        (
            [DrCall(_at(18), _at(18, 30), "day_ahead", 900.0)],
            "a 30 min call is outside the product's 60-240 min durations",
        ),
        (
            [
                DrCall(_at(8), _at(9), "day_ahead", 900.0),
                DrCall(_at(12), _at(13), "day_ahead", 900.0),
                DrCall(_at(18), _at(19), "day_ahead", 900.0),
            ],
            "more than 2 events called on 2026-03-10",
        ),
    ],
)
def test_a_call_breaking_the_product_rules_is_refused(calls: list[DrCall], message: str) -> None:
    with pytest.raises(ClearingError) as caught:
        issue_dr_events(_offers(), calls, _dr())
    assert message in str(caught.value)


def test_calls_are_derived_from_price_peaks() -> None:
    rules = _dr()
    prices = {_at(0) + Q * k: 300.0 for k in range(96)}
    prices[_at(10)] = 1200.0  # a one-interval spike: extended to the 60-min minimum
    for k in range(4):
        prices[_at(18, 15 * k)] = 1500.0 + k  # a one-hour peak
    for k in range(22):
        prices[_at(12) + Q * k] = 1000.0  # noon to 17:30: cut to 240 min
    prices[_at(13)] = 5000.0  # ... around the most expensive window
    calls = dr_calls_from_prices(prices, rules, trigger_price_per_mwh=1000.0)
    # Three runs; at most two events a day: the two with the highest mean price are kept.
    assert [(c.start, c.end) for c in calls] == [(_at(12), _at(16)), (_at(18), _at(19))]
    assert calls[0].price_per_mwh == pytest.approx((15 * 1000.0 + 5000.0) / 16)
    assert calls[1].price_per_mwh == pytest.approx(1501.5)
    assert {c.invitation for c in calls} == {"day_ahead"}


def test_the_simulator_issues_events_for_dr_offers() -> None:
    spot, dr = _spot(), _dr()
    calls = [DrCall(_at(18), _at(19), "day_ahead", 900.0)]
    simulator = MarketSimulator(spot, {}, dr=dr, dr_calls=calls)
    submission = Submission(
        "cn_peak_valley_dr",
        "demo-park",
        datetime(2026, 3, 9, 11, tzinfo=SHANGHAI),
        dr_offers=tuple(_offers()),
    )
    result = simulator.submit(submission)
    assert result.awards == ()
    assert [e.reduction_kw for e in result.dr_events] == [1400.0]
    with pytest.raises(ClearingError, match="not a market of this simulator"):
        simulator.submit(Submission("elsewhere", "demo-park", submission.submitted_at))
