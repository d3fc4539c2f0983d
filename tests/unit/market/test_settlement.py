"""Settlement against hand-computed cases: ratio, credited energy, payment, penalty, split.

The Chinese product pays 1.0 × price day ahead and 1.5 × in an emergency, credits delivery up to
120 % of the award, pays nothing below 50 % and penalises the shortfall below 80 % at 1 × price.
Events last one hour (four 15-minute intervals) at a flat load, so kW over the hour equal kWh.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from market.baseline import Baseline, BaselineSet
from market.rules import DemandResponseRules, SettlementRules
from market.settlement import (
    SettlementError,
    credit,
    settle_event,
    settle_period,
    settlement_records,
)
from vpp.config.loader import load_rule_set
from vpp.domain import DrEvent

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 10, 18, tzinfo=SHANGHAI)
END = START + timedelta(hours=1)
Q = timedelta(minutes=15)


def _cn() -> DemandResponseRules:
    rules = load_rule_set(Path("config/markets/cn_peak_valley_dr.yaml"))
    assert isinstance(rules, DemandResponseRules)
    return rules


def _event(reduction_kw: float = 1000.0, invitation: str = "day_ahead", **kw: object) -> DrEvent:
    return DrEvent(
        event_id="ev-1",
        product="cn_peak_valley_dr",
        start=START,
        end=END,
        notified_at=START - timedelta(days=1),
        reduction_kw=reduction_kw,
        price_per_mwh=800.0,
        invitation=invitation,
        **kw,  # type: ignore[arg-type]
    )


def _flat(
    site: str, kw: float, start: datetime = START, count: int = 4, step: timedelta = Q
) -> Baseline:
    starts = tuple(start + step * k for k in range(count))
    return Baseline(
        site=site,
        method="avg_5_working_days",
        event_day=start.date(),
        days=(),
        candidates=(),
        starts=starts,
        unadjusted_kw=(kw,) * count,
        baseline_kw=(kw,) * count,
        adjustment="none",
        adjustment_factor=1.0,
        adjustment_kw=0.0,
    )


def _baselines(a_kw: float = 3000.0, b_kw: float = 1000.0) -> BaselineSet:
    return BaselineSet(
        park=_flat("park", a_kw + b_kw),
        enterprises={"ent-a": _flat("ent-a", a_kw), "ent-b": _flat("ent-b", b_kw)},
    )


def _meter(kw: float, start: datetime = START, count: int = 4, step: timedelta = Q) -> pd.Series:
    index = pd.DatetimeIndex([start + step * k for k in range(count)])
    return pd.Series(kw, index=index, dtype=float)


def _settle(a_metered: float, b_metered: float, event: DrEvent | None = None):  # type: ignore[no-untyped-def]
    return settle_event(
        event or _event(),
        _cn(),
        _baselines(),
        {"ent-a": _meter(a_metered), "ent-b": _meter(b_metered)},
    )


def test_a_90_percent_response_is_paid_in_full_and_split_by_delivery() -> None:
    result = _settle(2400.0, 700.0)  # delivered 600 + 300 kW for an hour
    park = result.park
    assert park.target_kwh == pytest.approx(1000.0)
    assert park.delivered_kwh == pytest.approx(900.0)
    assert park.performance_ratio == pytest.approx(0.9)
    assert park.credited_kwh == pytest.approx(900.0)
    assert result.payment == pytest.approx(720.0)  # 0.9 MWh × 800
    assert result.penalty == 0.0
    a, b = result.enterprise("ent-a"), result.enterprise("ent-b")
    # Default targets follow baseline energy: 3000 : 1000.
    assert (a.target_kwh, b.target_kwh) == pytest.approx((750.0, 250.0))
    assert (a.payment, b.payment) == pytest.approx((480.0, 240.0))
    assert (a.performance_ratio, b.performance_ratio) == pytest.approx((0.8, 1.2))
    assert result.currency == "CNY"


def test_over_delivery_is_credited_up_to_the_cap() -> None:
    result = _settle(1800.0, 700.0)  # 1200 + 300 = 1500 kW, ratio 1.5
    assert result.park.credited_kwh == pytest.approx(1200.0)  # 120 % cap, no excess share
    assert result.payment == pytest.approx(960.0)


def test_a_shortfall_below_the_floor_is_penalised_on_the_enterprise_short_of_its_share() -> None:
    result = _settle(2700.0, 700.0)  # 300 + 300 = 600 kW, ratio 0.6
    assert result.park.credited_kwh == pytest.approx(600.0)
    assert result.payment == pytest.approx(480.0)
    assert result.penalised_kwh == pytest.approx(200.0)  # 800 floor − 600
    assert result.penalty == pytest.approx(160.0)
    assert result.park.net == pytest.approx(320.0)
    a, b = result.enterprise("ent-a"), result.enterprise("ent-b")
    assert (a.payment, b.payment) == pytest.approx((240.0, 240.0))
    # ent-a is 300 kWh short of 80 % of 750; ent-b delivered above 80 % of 250.
    assert (a.penalty, b.penalty) == pytest.approx((160.0, 0.0))


def test_below_the_no_payment_ratio_only_the_penalty_remains() -> None:
    result = _settle(2800.0, 800.0)  # 200 + 200 = 400 kW, ratio 0.4
    assert result.park.credited_kwh == 0.0
    assert result.payment == 0.0
    assert result.penalty == pytest.approx(320.0)  # (800 − 400) kWh × 800 / 1000


def test_an_emergency_call_pays_its_multiple() -> None:
    result = _settle(2400.0, 700.0, _event(invitation="emergency"))
    assert result.compensation_multiple == 1.5
    assert result.payment == pytest.approx(1080.0)


def test_a_valley_filling_event_credits_an_increase() -> None:
    result = _settle(3600.0, 1300.0, _event(reduction_kw=-1000.0))  # 600 + 300 kW more
    assert result.park.delivered_kwh == pytest.approx(-900.0)
    assert result.park.performance_ratio == pytest.approx(0.9)
    assert result.park.credited_kwh == pytest.approx(-900.0)
    assert result.payment == pytest.approx(720.0)
    assert result.enterprise("ent-a").payment == pytest.approx(480.0)


def test_an_opted_out_event_settles_to_nothing() -> None:
    result = _settle(2400.0, 700.0, _event(opted_in=False))
    assert (result.payment, result.penalty, result.park.target_kwh) == (0.0, 0.0, 0.0)


def test_explicit_targets_decide_who_is_short() -> None:
    result = settle_event(
        _event(),
        _cn(),
        _baselines(),
        {"ent-a": _meter(2700.0), "ent-b": _meter(700.0)},
        targets_kw={"ent-a": 250.0, "ent-b": 750.0},
    )
    a, b = result.enterprise("ent-a"), result.enterprise("ent-b")
    # ent-b: 80 % of 750 is 600, it delivered 300.
    assert (a.penalty, b.penalty) == pytest.approx((0.0, 160.0))


def test_interval_rows_carry_baseline_meter_and_delivery() -> None:
    result = _settle(2400.0, 700.0)
    park_rows = [r for r in result.intervals if r.site == "park"]
    assert [r.interval.start for r in park_rows] == [START + Q * k for k in range(4)]
    assert park_rows[0].baseline_kw == 4000.0
    assert park_rows[0].metered_kw == 3100.0
    assert park_rows[0].delivered_kwh == pytest.approx(225.0)
    assert len(result.intervals) == 12  # park, ent-a, ent-b


@pytest.mark.parametrize(
    ("awarded", "delivered", "credited", "penalised"),
    [
        (1000.0, 1000.0, 1000.0, 0.0),
        (1000.0, 1300.0, 1200.0, 0.0),  # 1100 cap + 50 % of the 200 beyond it
        (1000.0, 850.0, 850.0, 50.0),  # 900 floor − 850
        (1000.0, -100.0, 0.0, 900.0),  # consumption rose: nothing credited, full floor short
        (-1000.0, -1300.0, -1200.0, 0.0),  # an increase award
    ],
)
def test_the_credit_terms_110_50_90(
    awarded: float, delivered: float, credited: float, penalised: float
) -> None:
    terms = SettlementRules(
        credited_cap_ratio=1.1, excess_credit_share=0.5, penalty_floor_ratio=0.9
    )
    result = credit(awarded, delivered, terms)
    assert result.credited_kwh == pytest.approx(credited)
    assert result.penalised_kwh == pytest.approx(penalised if awarded > 0 else -penalised)


def test_economic_dr_settles_each_hour_at_its_own_price() -> None:
    rules = load_rule_set(Path("config/markets/us_pjm_economic_dr.yaml"))
    assert isinstance(rules, DemandResponseRules)
    ny = ZoneInfo("America/New_York")
    start = datetime(2026, 7, 14, 14, tzinfo=ny)
    hour = timedelta(hours=1)
    event = DrEvent("pjm-1", rules.id, start, start + 2 * hour, start - hour, 500.0, 0.0)
    baselines = BaselineSet(
        park=_flat("park", 2000.0, start, 2, hour),
        enterprises={"plant": _flat("plant", 2000.0, start, 2, hour)},
    )
    metered = pd.Series([1400.0, 1700.0], index=pd.DatetimeIndex([start, start + hour]))
    prices = {start: 100.0, start + hour: 200.0}
    result = settle_event(event, rules, baselines, {"plant": metered}, prices_per_mwh=prices)
    # Hour 1: 600 delivered, 500 credited at 100. Hour 2: 300 delivered at 200, 200 short.
    assert result.park.credited_kwh == pytest.approx(800.0)
    assert result.payment == pytest.approx(0.5 * 100 + 0.3 * 200)
    assert result.penalty == pytest.approx(0.2 * 200)
    assert result.currency == "USD"


def test_missing_meter_data_is_a_clear_error() -> None:
    with pytest.raises(SettlementError, match=r"^settlement of ev-1: no meter data for ent-b$"):
        settle_event(_event(), _cn(), _baselines(), {"ent-a": _meter(2400.0)})
    short = _meter(700.0).iloc[:3]
    with pytest.raises(SettlementError, match=r"no meter value of ent-b at 2026-03-10T18:45"):
        settle_event(_event(), _cn(), _baselines(), {"ent-a": _meter(2400.0), "ent-b": short})


def test_a_period_sums_events_per_site() -> None:
    first = _settle(2400.0, 700.0)
    second = replace(_settle(2700.0, 700.0), event_id="ev-2", start=START + timedelta(days=1))
    outside = replace(first, event_id="ev-3", start=START + timedelta(days=40))
    period = settle_period(
        [second, first, outside],
        datetime(2026, 3, 1, tzinfo=SHANGHAI),
        datetime(2026, 4, 1, tzinfo=SHANGHAI),
    )
    assert period.event_ids == ("ev-1", "ev-2")
    assert [s.site for s in period.sites] == ["park", "ent-a", "ent-b"]
    park = period.site("park")
    assert park.payment == pytest.approx(720.0 + 480.0)
    assert park.penalty == pytest.approx(160.0)
    assert park.delivered_kwh == pytest.approx(1500.0)
    assert park.performance_ratio == pytest.approx(0.75)
    assert period.site("ent-a").penalty == pytest.approx(160.0)
    assert period.site("ent-b").payment == pytest.approx(240.0 + 240.0)


def test_records_are_ready_for_the_store() -> None:
    result = _settle(2700.0, 700.0)
    records = settlement_records(result)
    assert [r.enterprise_id for r in records] == [None, "ent-a", "ent-b"]
    park = records[0]
    assert (park.scope, park.period_start, park.period_end) == ("event", START, END)
    assert park.payload["event_id"] == "ev-1"
    assert park.payload["net"] == pytest.approx(320.0)
    assert records[1].payload["penalty"] == pytest.approx(160.0)
    json.dumps([r.payload for r in records])  # plain JSON values only
    period = settle_period([result], START, END)
    assert [r.scope for r in settlement_records(period)] == ["period"] * 3
