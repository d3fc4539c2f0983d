"""Market rule sets: the shipped files load, and every broken rule names its file, line and field."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from market.rules import BaselineRules, DemandResponseRules, SpotMarketRules
from vpp.config.loader import load_park, load_rule_set
from vpp.errors import ConfigError

MARKETS = Path("config/markets")
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize("path", sorted(MARKETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_rule_set_loads_under_its_file_name(path: Path) -> None:
    rules = load_rule_set(path)
    assert rules.id == path.stem


def test_the_required_rule_sets_exist_with_their_kinds() -> None:
    spot = load_rule_set(MARKETS / "cn_provincial_spot.yaml")
    dr = load_rule_set(MARKETS / "cn_peak_valley_dr.yaml")
    us_spot = load_rule_set(MARKETS / "us_pjm_energy.yaml")
    us_dr = load_rule_set(MARKETS / "us_pjm_economic_dr.yaml")
    assert isinstance(spot, SpotMarketRules)
    assert spot.intervals_per_day == 96
    assert (spot.price_floor_per_mwh, spot.price_cap_per_mwh) == (-80, 1500)
    assert spot.single_node
    assert isinstance(dr, DemandResponseRules)
    assert {i.kind for i in dr.invitations} == {"day_ahead", "emergency"}
    assert dr.invitation("emergency") is not None
    assert dr.invitation("intraday") is None
    assert isinstance(us_spot, SpotMarketRules)
    assert us_spot.economic_dr
    assert us_spot.intervals_per_day == 24
    assert isinstance(us_dr, DemandResponseRules)
    assert us_dr.baseline.method == "pjm_high_4_of_5"
    assert us_dr.baseline.adjustment == "additive"


def test_the_small_park_loads_with_the_chinese_rule_sets() -> None:
    loaded = load_park("tests/fixtures/small_park.yaml", markets_dir=MARKETS)
    assert loaded.spot.id == "cn_provincial_spot"
    assert loaded.dr is not None
    assert loaded.dr.id == "cn_peak_valley_dr"


def test_the_chinese_calendar_knows_holidays_and_make_up_working_days() -> None:
    calendar = load_rule_set(MARKETS / "cn_peak_valley_dr.yaml").calendar
    assert not calendar.is_working_day(date(2026, 2, 16))  # Monday in Spring Festival
    assert calendar.is_holiday(date(2026, 2, 16))
    assert calendar.is_working_day(date(2026, 2, 14))  # Saturday worked in exchange
    assert not calendar.is_working_day(date(2026, 3, 7))  # an ordinary Saturday
    assert calendar.is_working_day(date(2026, 3, 9))  # an ordinary Monday
    assert not calendar.is_working_day(date(2025, 10, 8))


def test_gate_closure_is_the_local_time_days_before_delivery() -> None:
    spot = load_rule_set(MARKETS / "cn_provincial_spot.yaml")
    closes = spot.gate_closure.closes_at(date(2026, 3, 10), spot.tz)
    assert closes == datetime(2026, 3, 9, 9, 30, tzinfo=SHANGHAI)


def test_a_baseline_named_by_method_gets_that_methods_usual_adjustment() -> None:
    caiso = BaselineRules.model_validate("caiso_10_in_10")
    assert (caiso.adjustment, caiso.adjustment_cap_ratio) == ("multiplicative", 0.2)
    assert (caiso.pool_days, caiso.keep_days) == (10, 10)
    pjm = BaselineRules.model_validate("pjm_high_4_of_5")
    assert (pjm.adjustment, pjm.pool_days, pjm.keep_days) == ("none", 5, 4)
    assert BaselineRules.model_validate("high_5_of_10").keep_days == 5


SPOT = """\
id: broken
kind: spot
name: A broken market
currency: CNY
price_floor_per_mwh: -80
price_cap_per_mwh: 1500
gate_closure: {days_before: 1, at: "09:30"}
"""

DR = """\
id: broken
kind: demand_response
name: A broken product
currency: CNY
bid_price_cap_per_mwh: 3000
invitations:
  - {kind: day_ahead, notice_min: 1440}
"""


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (SPOT.replace("-80", "1600"), 1, "", "must be below price_cap_per_mwh"),
        (SPOT + "max_bid_segments: 0\n", 8, "max_bid_segments", "greater than or equal to 1"),
        (SPOT + "colour: red\n", 8, "colour", "unknown key"),
        (SPOT + "timezone: Mars/Olympus\n", 8, "timezone", "unknown timezone 'Mars/Olympus'"),
        (SPOT + "interval_min: 7\n", 8, "interval_min", "input should be 5, 15, 30 or 60"),
        (SPOT.replace('"09:30"', '"25:00"'), 7, "gate_closure.at", "time"),
        (SPOT.replace("currency: CNY", "currency: yuan"), 4, "currency", "pattern"),
        (
            SPOT + "calendar:\n  holidays: [2026-03-02]\n  working_weekends: [2026-03-02]\n",
            8,
            "calendar",
            "2026-03-02 is listed both as holiday and as working day",
        ),
        (
            SPOT + "calendar:\n  working_weekends: [2026-03-02]\n",
            8,
            "calendar",
            "2026-03-02 is not a weekend day",
        ),
        (
            SPOT + "baseline: {method: pjm_high_4_of_5, min_days: 6}\n",
            8,
            "baseline",
            "min_days 6 exceeds the 5 days pjm_high_4_of_5 uses",
        ),
        (SPOT + "baseline: best_guess\n", 8, "baseline.method", "input should be"),
        (
            SPOT + "settlement: {no_payment_below_ratio: 0.95}\n",
            8,
            "settlement",
            "no_payment_below_ratio must not exceed penalty_floor_ratio",
        ),
        (
            SPOT + "settlement: {credited_cap_ratio: 0.9}\n",
            8,
            "settlement",
            "credited_cap_ratio must be at least 1",
        ),
        (DR + "min_duration_min: 300\n", 1, "", "min_duration_min must not exceed"),
        (
            DR + "  - {kind: day_ahead, notice_min: 60}\n",
            1,
            "",
            "each invitation kind may be listed once",
        ),
        (
            DR.replace("kind: day_ahead", "kind: someday"),
            7,
            "invitations[0].kind",
            "input should be",
        ),
        (DR.replace("3000", "0"), 5, "bid_price_cap_per_mwh", "greater than 0"),
        (DR.replace("kind: demand_response", "kind: futures"), 2, "kind", "unknown kind 'futures'"),
    ],
)
def test_a_broken_rule_set_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rule_set(path)
    problem = caught.value.problems[0]
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)
    assert message in problem.message
    assert str(caught.value).startswith(f"{path}:{line}:")


def test_a_broken_included_calendar_points_into_the_calendar_file(tmp_path: Path) -> None:
    (tmp_path / "holidays.yaml").write_text("holidays:\n  - soon\n", encoding="utf-8")
    path = tmp_path / "broken.yaml"
    path.write_text(SPOT + "calendar: {include: holidays.yaml}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rule_set(path)
    problem = caught.value.problems[0]
    assert problem.file.endswith("holidays.yaml")
    assert problem.line == 2
    assert problem.field == "calendar.holidays[0]"


def test_gate_closure_time_parses_from_text() -> None:
    spot = load_rule_set(MARKETS / "us_pjm_energy.yaml")
    assert spot.gate_closure.at == time(10, 30)
    assert spot.timezone == "America/New_York"
