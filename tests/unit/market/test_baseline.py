"""Baselines against hand-computed values, on the Chinese calendar around Spring Festival 2026.

Meter history: hourly, load = 100 × f(day) + hour of day, with f chosen per working day so that
the "highest days" differ from the "most recent days". Working days before Monday 2 March 2026:
28 Feb (a Saturday worked in exchange), 27, 26, 25, 24 Feb, then the holiday 15-23 Feb, then
14 Feb (a Saturday worked), 13, 12, 11, 10 Feb.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from market.baseline import BaselineError, compute_baseline, compute_baselines
from market.rules import BaselineRules, DemandResponseRules
from vpp.config.loader import load_rule_set

SHANGHAI = ZoneInfo("Asia/Shanghai")
F = {
    date(2026, 2, 28): 40,
    date(2026, 2, 27): 50,
    date(2026, 2, 26): 20,
    date(2026, 2, 25): 10,
    date(2026, 2, 24): 30,
    date(2026, 2, 14): 5,
    date(2026, 2, 13): 60,
    date(2026, 2, 12): 7,
    date(2026, 2, 11): 45,
    date(2026, 2, 10): 15,
}
EVENT_START = datetime(2026, 3, 2, 14, tzinfo=SHANGHAI)
EVENT_END = datetime(2026, 3, 2, 16, tzinfo=SHANGHAI)


def _rules(**baseline: object) -> DemandResponseRules:
    rules = load_rule_set(Path("config/markets/cn_peak_valley_dr.yaml"))
    assert isinstance(rules, DemandResponseRules)
    return rules.model_copy(
        update={"interval_min": 60, "baseline": BaselineRules.model_validate(baseline)}
    )


def _history(event_day_f: float = 2.0) -> pd.Series:
    start = datetime(2026, 1, 15, tzinfo=SHANGHAI)
    stamps = pd.date_range(start, periods=24 * 53, freq="h")  # to 9 March
    values = []
    for stamp in stamps:
        day = stamp.date()
        f = event_day_f if day == date(2026, 3, 2) else F.get(day, day.day)
        values.append(100.0 * f + stamp.hour)
    # Given in UTC: the baseline must work in the market's local time.
    return pd.Series(values, index=stamps.tz_convert("UTC"))


def test_average_of_the_last_5_working_days_counts_make_up_saturdays() -> None:
    baseline = compute_baseline(
        _history(), EVENT_START, EVENT_END, _rules(method="avg_5_working_days")
    )
    assert baseline.days == (
        date(2026, 2, 28),
        date(2026, 2, 27),
        date(2026, 2, 26),
        date(2026, 2, 25),
        date(2026, 2, 24),
    )
    # f = (40 + 50 + 20 + 10 + 30) / 5 = 30
    assert baseline.baseline_kw == pytest.approx((3014.0, 3015.0))
    assert baseline.starts == (EVENT_START, EVENT_START + timedelta(hours=1))
    assert baseline.at(EVENT_START + timedelta(hours=1)) == pytest.approx(3015.0)


def test_event_days_are_excluded_and_the_holiday_is_skipped() -> None:
    baseline = compute_baseline(
        _history(),
        EVENT_START,
        EVENT_END,
        _rules(method="avg_5_working_days"),
        excluded_days={date(2026, 2, 26)},
    )
    # 26 Feb out; 15-23 Feb are holidays; 14 Feb (worked Saturday) comes in: f = 135 / 5 = 27
    assert baseline.days[-1] == date(2026, 2, 14)
    assert baseline.baseline_kw == pytest.approx((2714.0, 2715.0))


def test_a_day_with_missing_meter_data_is_skipped() -> None:
    history = _history()
    history = history.drop(pd.Timestamp(datetime(2026, 2, 27, 10, tzinfo=SHANGHAI)))
    baseline = compute_baseline(
        history, EVENT_START, EVENT_END, _rules(method="avg_5_working_days")
    )
    assert date(2026, 2, 27) not in baseline.days
    # 28, 26, 25, 24, 14 Feb: f = 105 / 5 = 21
    assert baseline.baseline_kw == pytest.approx((2114.0, 2115.0))


def test_extra_holidays_passed_in_are_not_working_days() -> None:
    baseline = compute_baseline(
        _history(),
        EVENT_START,
        EVENT_END,
        _rules(method="avg_5_working_days"),
        holidays={date(2026, 2, 28)},
    )
    assert date(2026, 2, 28) not in baseline.days
    # 27, 26, 25, 24, 14 Feb: f = 115 / 5 = 23
    assert baseline.baseline_kw == pytest.approx((2314.0, 2315.0))


def test_a_non_working_event_day_uses_non_working_days() -> None:
    start = datetime(2026, 3, 7, 14, tzinfo=SHANGHAI)  # a Saturday
    baseline = compute_baseline(
        _history(), start, start + timedelta(hours=1), _rules(method="avg_5_working_days")
    )
    assert baseline.days == (
        date(2026, 3, 1),
        date(2026, 2, 23),
        date(2026, 2, 22),
        date(2026, 2, 21),
        date(2026, 2, 20),
    )
    assert baseline.baseline_kw == pytest.approx((100.0 * (1 + 23 + 22 + 21 + 20) / 5 + 14,))


def test_pjm_high_4_of_5_keeps_the_four_highest_recent_days() -> None:
    baseline = compute_baseline(
        _history(), EVENT_START, EVENT_END, _rules(method="pjm_high_4_of_5")
    )
    assert baseline.candidates == (
        date(2026, 2, 28),
        date(2026, 2, 27),
        date(2026, 2, 26),
        date(2026, 2, 25),
        date(2026, 2, 24),
    )
    assert set(baseline.days) == {
        date(2026, 2, 27),
        date(2026, 2, 28),
        date(2026, 2, 24),
        date(2026, 2, 26),
    }
    # f = (50 + 40 + 30 + 20) / 4 = 35
    assert baseline.baseline_kw == pytest.approx((3514.0, 3515.0))


def test_high_5_of_10_keeps_the_five_highest_of_ten() -> None:
    baseline = compute_baseline(_history(), EVENT_START, EVENT_END, _rules(method="high_5_of_10"))
    assert len(baseline.candidates) == 10
    assert baseline.candidates[-1] == date(2026, 2, 10)
    assert set(baseline.days) == {
        date(2026, 2, 13),
        date(2026, 2, 27),
        date(2026, 2, 11),
        date(2026, 2, 28),
        date(2026, 2, 24),
    }
    # f = (60 + 50 + 45 + 40 + 30) / 5 = 45
    assert baseline.baseline_kw == pytest.approx((4514.0, 4515.0))


# CAISO 10-in-10: the ten days average f = 282 / 10 = 28.2, so 2820 + hour unadjusted. The
# adjustment window is 10:00-13:00 (three hours ending one hour before the 14:00 start), where
# the baseline averages 2831.
@pytest.mark.parametrize(
    ("event_day_f", "factor"),
    [
        (30.0, 3011.0 / 2831.0),  # within ±20 %: applied as measured
        (2.0, 0.8),  # the event day runs far below: capped at -20 %
        (50.0, 1.2),  # far above: capped at +20 %
    ],
)
def test_caiso_10_in_10_with_a_capped_same_day_adjustment(
    event_day_f: float, factor: float
) -> None:
    baseline = compute_baseline(
        _history(event_day_f),
        EVENT_START,
        EVENT_END,
        _rules(method="caiso_10_in_10", adjustment="multiplicative"),
    )
    assert len(baseline.days) == 10
    assert baseline.unadjusted_kw == pytest.approx((2834.0, 2835.0))
    assert baseline.adjustment_factor == pytest.approx(factor)
    assert baseline.baseline_kw == pytest.approx((2834.0 * factor, 2835.0 * factor))


def test_caiso_named_alone_gets_the_20_percent_cap() -> None:
    rules = load_rule_set(Path("config/markets/us_caiso_pdr.yaml"))
    assert rules.baseline.adjustment == "multiplicative"
    assert rules.baseline.adjustment_cap_ratio == 0.2


def test_pjm_additive_adjustment_shifts_by_the_morning_difference() -> None:
    # Event day at f = 30: 3011 measured over 10:00-13:00 against a 3511 baseline there.
    history = _history(30.0)
    free = compute_baseline(
        history,
        EVENT_START,
        EVENT_END,
        _rules(method="pjm_high_4_of_5", adjustment="additive", adjustment_cap_ratio=None),
    )
    assert free.adjustment_kw == pytest.approx(-500.0)
    assert free.baseline_kw == pytest.approx((3014.0, 3015.0))
    capped = compute_baseline(
        history,
        EVENT_START,
        EVENT_END,
        _rules(method="pjm_high_4_of_5", adjustment="additive", adjustment_cap_ratio=0.1),
    )
    assert capped.adjustment_kw == pytest.approx(-351.1)
    assert capped.baseline_kw == pytest.approx((3514.0 - 351.1, 3515.0 - 351.1))


def test_too_few_eligible_days_is_a_clear_error() -> None:
    with pytest.raises(BaselineError) as caught:
        compute_baseline(
            _history(),
            EVENT_START,
            EVENT_END,
            _rules(method="caiso_10_in_10", max_lookback_days=7),
            site="ent-a",
        )
    assert str(caught.value) == (
        "baseline of ent-a: caiso_10_in_10 needs 10 eligible working days within 7 days before "
        "2026-03-02, found 5"
    )


def test_a_naive_history_is_refused() -> None:
    history = _history()
    history.index = pd.DatetimeIndex(history.index).tz_localize(None)
    with pytest.raises(BaselineError, match="timezone-aware"):
        compute_baseline(history, EVENT_START, EVENT_END, _rules(method="avg_5_working_days"))


def test_enterprise_and_park_baselines_from_stored_history() -> None:
    a = _history()
    b = pd.Series(100.0, index=a.index)
    result = compute_baselines(
        {"ent-a": a, "ent-b": b}, EVENT_START, EVENT_END, _rules(method="pjm_high_4_of_5")
    )
    assert result.enterprises["ent-a"].baseline_kw == pytest.approx((3514.0, 3515.0))
    assert result.enterprises["ent-b"].baseline_kw == pytest.approx((100.0, 100.0))
    assert result.park.site == "park"
    assert result.park.baseline_kw == pytest.approx((3614.0, 3615.0))
    assert result.park.as_series().index[0] == pd.Timestamp(EVENT_START)
