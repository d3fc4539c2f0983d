"""Carbon and energy accounting against hand-computed cases; indicator thresholds by park size."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from dispatch.series import Horizon
from vpp.carbon import (
    CarbonError,
    EnergyCarbonTotals,
    GridEmissionFactor,
    IndicatorConfig,
    MeteredPeriod,
    TradeoffPoint,
    account,
    daily_trend,
    evaluate_indicators,
    grid_factor,
    load_emission_series,
    load_indicators,
    local_day_horizon,
    pareto_front,
    tradeoff_curve,
)
from vpp.config.schema import Park
from vpp.errors import ConfigError

INDICATORS = Path(__file__).resolve().parents[3] / "config" / "indicators.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")
EF = 0.5306
KGCE = 0.1229

LOAD = {
    "id": "load",
    "kind": "curtailable_load",
    "profile": {"weekday_kw": [500.0] * 24},
    "max_reduction_kw": 100,
}


def make_park(*enterprises: list[dict[str, Any]], carbon: dict[str, Any] | None = None) -> Park:
    data: dict[str, Any] = {
        "id": "p",
        "name": "Test park",
        "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
        "grid_import_limit_kw": 10_000,
        "market": {"rule_set": "cn_provincial_spot"},
        "enterprises": [
            {"id": f"e{i}", "name": f"E{i}", "connection_limit_kw": 5000, "assets": assets}
            for i, assets in enumerate(enterprises, start=1)
        ],
    }
    if carbon is not None:
        data["carbon"] = carbon
    return Park.model_validate(data)


def asset(base: dict[str, Any], asset_id: str, **extra: Any) -> dict[str, Any]:
    return {**base, "id": asset_id, **extra}


def horizon(intervals: int, minutes: int = 15) -> Horizon:
    return Horizon(
        datetime(2026, 7, 15, 0, 0, tzinfo=SHANGHAI), timedelta(minutes=minutes), intervals
    )


@pytest.fixture(scope="module")
def indicators() -> IndicatorConfig:
    return load_indicators(INDICATORS)


def constant_factor(value: float = EF) -> GridEmissionFactor:
    return GridEmissionFactor(value)


def series(*values: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array(values, dtype=float)


def test_grid_import_only_is_import_times_factor(indicators: IndicatorConfig) -> None:
    park = make_park([asset(LOAD, "l1")])
    metered = MeteredPeriod(horizon(4), {"l1": series(100, 100, 100, 100)})
    result = account(park, metered, constant_factor(), indicators)
    totals = result.park.totals()
    # 4 × 15 min at 100 kW = 100 kWh; × 0.5306 = 53.06 kg; × 0.1229 = 12.29 kgce
    assert totals.import_kwh == pytest.approx(100.0)
    assert totals.emission_t == pytest.approx(0.05306)
    assert totals.energy_tce == pytest.approx(0.01229)
    assert totals.carbon_intensity_t_per_tce == pytest.approx(0.05306 / 0.01229)
    assert totals.clean_share == pytest.approx(0.0)
    assert result.enterprises["e1"].totals() == totals


def test_pv_self_consumption_and_export(indicators: IndicatorConfig) -> None:
    park = make_park([asset(LOAD, "l1"), {"id": "pv1", "kind": "pv", "capacity_kwp": 300}])
    metered = MeteredPeriod(horizon(2), {"l1": series(100, 100), "pv1": series(-150, -50)})
    totals = account(park, metered, constant_factor(), indicators).park.totals()
    # interval 1: net -50 kW → 12.5 kWh exported out of 37.5 kWh PV; interval 2: 12.5 kWh import
    assert totals.export_kwh == pytest.approx(12.5)
    assert totals.import_kwh == pytest.approx(12.5)
    assert totals.pv_kwh == pytest.approx(50.0)
    assert totals.pv_self_kwh == pytest.approx(37.5)
    assert totals.emission_t == pytest.approx(12.5 * EF / 1000)
    assert totals.energy_tce == pytest.approx((12.5 + 37.5) * KGCE / 1000)
    assert totals.clean_share == pytest.approx(37.5 / 50.0)


@pytest.mark.parametrize(("fuel", "clean"), [("diesel", False), ("biogas", True)])
def test_generator_fuel_energy_and_emissions(
    indicators: IndicatorConfig, fuel: str, clean: bool
) -> None:
    generator = {
        "id": "g1",
        "kind": "generator",
        "fuel": fuel,
        "max_kw": 500,
        "fuel_cost_per_mwh": 900,
        "emission_kg_per_kwh": 0.8,
        "fuel_kwh_per_kwh": 3.0,
    }
    park = make_park([asset(LOAD, "l1"), generator])
    metered = MeteredPeriod(horizon(1, minutes=60), {"l1": series(300), "g1": series(-200)})
    totals = account(park, metered, constant_factor(), indicators).park.totals()
    # 100 kWh imported; 200 kWh generated from 600 kWh fuel = 73.74 kgce
    assert totals.generator_kwh == pytest.approx(200.0)
    assert totals.grid_emission_t == pytest.approx(0.05306)
    assert totals.fuel_emission_t == pytest.approx(0.160)
    assert totals.energy_tce == pytest.approx((100 * KGCE + 600 * KGCE) / 1000)
    expected_clean = 600 * KGCE / (700 * KGCE) if clean else 0.0
    assert totals.clean_share == pytest.approx(expected_clean)


def test_green_certificates_cover_import_pro_rata(indicators: IndicatorConfig) -> None:
    # 8.76 MWh a year = 1 kWh per hour of the period
    park = make_park([asset(LOAD, "l1")], carbon={"green_certificates_mwh_per_year": 8.76})
    metered = MeteredPeriod(horizon(2, minutes=60), {"l1": series(100, 300)})
    result = account(park, metered, constant_factor(), indicators)
    totals = result.park.totals()
    assert totals.green_kwh == pytest.approx(2.0)
    assert totals.emission_t == pytest.approx(398 * EF / 1000)
    assert totals.clean_share == pytest.approx(2.0 / 400.0)
    # spread in proportion to the import: 0.5 and 1.5 kWh
    assert result.park.green_kwh == pytest.approx([0.5, 1.5])


def test_green_certificates_never_exceed_import(indicators: IndicatorConfig) -> None:
    park = make_park([asset(LOAD, "l1")], carbon={"green_certificates_mwh_per_year": 1e6})
    metered = MeteredPeriod(horizon(4), {"l1": series(100, 0, 50, 100)})
    totals = account(park, metered, constant_factor(), indicators).park.totals()
    assert totals.green_kwh == pytest.approx(totals.import_kwh)
    assert totals.emission_t == pytest.approx(0.0)
    assert totals.clean_share == pytest.approx(1.0)


def test_park_nets_exchange_between_enterprises(indicators: IndicatorConfig) -> None:
    park = make_park(
        [{"id": "pv1", "kind": "pv", "capacity_kwp": 300}],
        [asset(LOAD, "l2")],
    )
    metered = MeteredPeriod(horizon(1, minutes=60), {"pv1": series(-80), "l2": series(80)})
    result = account(park, metered, constant_factor(), indicators)
    park_totals = result.park.totals()
    assert park_totals.import_kwh == pytest.approx(0.0)
    assert park_totals.emission_t == pytest.approx(0.0)
    assert park_totals.clean_share == pytest.approx(1.0)
    # each enterprise seen at its own meter: e1 exports, e2 imports from the grid
    assert result.enterprises["e1"].totals().export_kwh == pytest.approx(80.0)
    assert result.enterprises["e2"].totals().emission_t == pytest.approx(80 * EF / 1000)


def test_other_load_adds_to_enterprise_consumption(indicators: IndicatorConfig) -> None:
    park = make_park([asset(LOAD, "l1")])
    metered = MeteredPeriod(horizon(1, minutes=60), {"l1": series(10)}, {"e1": series(90)})
    totals = account(park, metered, constant_factor(), indicators).park.totals()
    assert totals.import_kwh == pytest.approx(100.0)


def test_bad_metered_input_is_refused(indicators: IndicatorConfig) -> None:
    park = make_park([asset(LOAD, "l1")])
    with pytest.raises(CarbonError, match="shape"):
        MeteredPeriod(horizon(4), {"l1": series(1, 2)})
    with pytest.raises(CarbonError, match="NaN"):
        MeteredPeriod(horizon(2), {"l1": series(1, float("nan"))})
    with pytest.raises(CarbonError, match="not enrolled"):
        account(
            park, MeteredPeriod(horizon(1), {"ghost": series(1)}), constant_factor(), indicators
        )


def test_daily_profile_factor_follows_local_time(
    tmp_path: Path, indicators: IndicatorConfig
) -> None:
    csv_file = tmp_path / "grid.csv"
    csv_file.write_text("timestamp,kg_per_kwh\n06:00,0.6\n12:00,0.4\n")
    factor = load_emission_series(csv_file, "Asia/Shanghai")
    starts = [datetime(2026, 7, 15, h, m, tzinfo=SHANGHAI) for h, m in ((0, 0), (11, 45), (12, 0))]
    # before 06:00 the last value of the previous day holds
    assert factor.at(starts) == pytest.approx([0.4, 0.6, 0.4])

    park = make_park([asset(LOAD, "l1")], carbon={"grid_emission_series": "grid.csv"})
    from_settings = grid_factor(park.carbon, tmp_path, park.timezone)
    h = Horizon(starts[1], timedelta(minutes=15), 2)
    result = account(park, MeteredPeriod(h, {"l1": series(400, 400)}), from_settings, indicators)
    assert result.park.totals().emission_t == pytest.approx((100 * 0.6 + 100 * 0.4) / 1000)


def test_dated_series_steps_and_refuses_earlier_times(tmp_path: Path) -> None:
    csv_file = tmp_path / "grid.csv"
    csv_file.write_text("2026-07-15T00:00:00+08:00,0.5\n2026-07-15T01:00:00+08:00,0.7\n")
    factor = load_emission_series(csv_file, "Asia/Shanghai")
    moments = [datetime(2026, 7, 14, 16, 30, tzinfo=UTC), datetime(2026, 7, 15, 3, tzinfo=SHANGHAI)]
    assert factor.at(moments) == pytest.approx([0.5, 0.7])
    with pytest.raises(CarbonError, match="no grid emission factor"):
        factor.at([datetime(2026, 7, 14, 23, tzinfo=SHANGHAI)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("06:00,abc\n", "not a number"),
        ("06:00,3.5\n", "outside"),
        ("2026-07-15T00:00:00,0.5\n", "no UTC offset"),
        ("06:00,0.5\n2026-07-15T00:00:00+08:00,0.5\n", "mixes"),
        ("yesterday,0.5\n", "not an ISO timestamp"),
    ],
)
def test_bad_emission_series_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    csv_file = tmp_path / "grid.csv"
    csv_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_emission_series(csv_file, "Asia/Shanghai")


def totals_for(energy_tce: float, emission_t: float, clean_tce: float) -> EnergyCarbonTotals:
    return EnergyCarbonTotals(0, 0, 0, 0, 0, 0, emission_t, 0, energy_tce, clean_tce)


@pytest.mark.parametrize(
    ("annual_tce", "threshold", "in_scheme"),
    [
        (150_000, 0.2, False),
        (200_000, 0.2, True),
        (999_999, 0.2, True),
        (1_000_000, 0.3, True),
        (3e6, 0.3, True),
    ],
)
def test_threshold_switches_with_park_size(
    indicators: IndicatorConfig, annual_tce: float, threshold: float, in_scheme: bool
) -> None:
    # one year of accounting, so the annualised size is the period's consumption
    totals = totals_for(annual_tce, 0.25 * annual_tce, 0.95 * annual_tce)
    result = evaluate_indicators(totals, 8760, indicators)
    assert result.carbon_intensity_max_t_per_tce == threshold
    assert result.band.in_scheme is in_scheme
    assert result.carbon_intensity_t_per_tce == pytest.approx(0.25)
    assert result.carbon_intensity_ok is (threshold >= 0.25)
    assert result.clean_share_ok
    assert result.met is (in_scheme and threshold >= 0.25)


def test_size_is_annualised_or_declared(indicators: IndicatorConfig) -> None:
    # one day at 1500 tce is 547 500 tce a year
    day = evaluate_indicators(totals_for(1500, 150, 1400), 24, indicators)
    assert day.annual_energy_tce == pytest.approx(547_500)
    assert day.size_basis == "annualised"
    declared = indicators.model_copy(update={"declared_annual_energy_tce": 2e6})
    result = evaluate_indicators(totals_for(1500, 150, 1400), 24, declared)
    assert result.size_basis == "declared"
    assert result.carbon_intensity_max_t_per_tce == 0.3


def test_thresholds_come_from_the_file(tmp_path: Path) -> None:
    text = INDICATORS.read_text().replace(
        "clean_energy_share_min: 0.90", "clean_energy_share_min: 0.5"
    )
    text = text.replace("max_t_co2_per_tce: 0.3", "max_t_co2_per_tce: 0.45")
    custom = tmp_path / "indicators.yaml"
    custom.write_text(text)
    config = load_indicators(custom)
    result = evaluate_indicators(totals_for(2e6, 0.4 * 2e6, 0.6 * 2e6), 8760, config)
    assert result.carbon_intensity_max_t_per_tce == 0.45
    assert result.carbon_intensity_ok
    assert result.clean_share_min == 0.5
    assert result.met


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("max_tce_per_year: 200000", "max_tce_per_year: 150000"), "must end where"),
        (("clean_energy_share_min: 0.90", "clean_energy_share_min: 1.5"), "less than or equal"),
        (("grid_clean_share: 0.0", "grid_clean_share: 0.0\nsurprise: 1"), "unknown key"),
    ],
)
def test_bad_indicator_file_names_line_and_field(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    bad = tmp_path / "indicators.yaml"
    bad.write_text(INDICATORS.read_text().replace(*edit))
    with pytest.raises(ConfigError, match=message) as caught:
        load_indicators(bad)
    assert all(p.line is not None for p in caught.value.problems)


def test_daily_trend_splits_local_days(indicators: IndicatorConfig) -> None:
    park = make_park([asset(LOAD, "l1")])
    start = datetime(2026, 7, 15, 22, 0, tzinfo=SHANGHAI)
    h = Horizon(start, timedelta(hours=1), 4)  # 22:00, 23:00 | 00:00, 01:00
    result = account(
        park, MeteredPeriod(h, {"l1": series(100, 100, 200, 200)}), constant_factor(), indicators
    )
    trend = daily_trend(result.park, h, "Asia/Shanghai")
    assert [p.day for p in trend] == [date(2026, 7, 15), date(2026, 7, 16)]
    assert trend[0].energy_tce == pytest.approx(200 * KGCE / 1000)
    assert trend[1].emission_t == pytest.approx(400 * EF / 1000)


def test_local_day_has_96_quarter_hours() -> None:
    h = local_day_horizon(date(2026, 7, 15), "Asia/Shanghai", timedelta(minutes=15))
    assert h.intervals == 96
    assert h.start == datetime(2026, 7, 15, tzinfo=SHANGHAI)
    assert h.starts()[-1] == datetime(2026, 7, 15, 23, 45, tzinfo=SHANGHAI)
    # a DST day in a zone that has one: 23 hours
    spring = local_day_horizon(date(2026, 3, 29), "Europe/Berlin", timedelta(minutes=15))
    assert spring.intervals == 92
    assert spring.end == datetime(2026, 3, 30, tzinfo=ZoneInfo("Europe/Berlin"))


def test_tradeoff_curve_by_hand() -> None:
    # 1000 kWh to serve: grid at 500/MWh and 0.5306 kg/kWh, or gas at 700/MWh and 0.40 kg/kWh.
    # Gas wins once 0.5306 λ/1000 + 0.5 > 0.40 λ/1000 + 0.7, i.e. λ > 1531.39 /t.
    def evaluate(price: float) -> TradeoffPoint:
        grid = 0.5 + EF * price / 1000
        gas = 0.7 + 0.40 * price / 1000
        if grid <= gas:
            return TradeoffPoint(price, "optimal", 500.0, 0.5306)
        return TradeoffPoint(price, "optimal", 700.0, 0.40)

    points = tradeoff_curve(evaluate, [2000, 0, 1000, 1000])
    assert [p.carbon_price_per_t for p in points] == [0, 1000, 2000]
    assert [p.energy_cost for p in points] == [500, 500, 700]
    front = pareto_front([*points, TradeoffPoint(3000, "infeasible", None, None)])
    assert {(p.energy_cost, p.emission_t) for p in front} == {(500, 0.5306), (700, 0.40)}
    with pytest.raises(CarbonError):
        tradeoff_curve(evaluate, [-1])


def test_pareto_front_drops_dominated_points() -> None:
    points = [
        TradeoffPoint(0, "optimal", 100, 10),
        TradeoffPoint(1, "optimal", 120, 12),  # worse on both
        TradeoffPoint(2, "optimal", 130, 8),
    ]
    assert [p.carbon_price_per_t for p in pareto_front(points)] == [0, 2]


def test_report_command_writes_html_and_plots(tmp_path: Path) -> None:
    from vpp.cli import main

    root = INDICATORS.parents[1]
    out = tmp_path / "report"
    code = main(
        [
            "report",
            "--config", str(root / "tests" / "fixtures" / "small_park.yaml"),
            "--markets", str(root / "config" / "markets"),
            "--indicators", str(INDICATORS),
            "--from", "2026-07-15", "--to", "2026-07-16",
            "--out", str(out),
            "--estimate",
        ]
    )  # fmt: skip
    assert code == 0
    page = (out / "index.html").read_text()
    assert "Zero-carbon park indicators" in page
    assert "estimated from the enrollment" in page
    assert "Enterprise A (ent-a)" in page
    for name in ("energy.png", "carbon.png", "enterprises.png", "dr_revenue.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}"' in page


def test_carbon_price_trades_cost_for_emissions(indicators: IndicatorConfig) -> None:
    from vpp.commands.tradeoff import evaluate_day, example_prices
    from vpp.config import load_park

    root = INDICATORS.parents[1]
    park = load_park(
        root / "tests" / "fixtures" / "small_park.yaml", root / "config" / "markets"
    ).park
    day = local_day_horizon(date(2026, 7, 15), park.timezone, timedelta(hours=1))
    prices = example_prices(day, park.timezone)
    evaluate, accounted = evaluate_day(park, day, prices, constant_factor(), indicators, 20.0)
    points = tradeoff_curve(evaluate, [0, 3000])
    assert all(p.status in ("optimal", "feasible") for p in points)
    low, high = points
    assert low.energy_cost is not None and high.energy_cost is not None
    assert low.emission_t is not None and high.emission_t is not None
    # a carbon price never makes the plan cheaper to run, nor dirtier
    assert high.energy_cost >= low.energy_cost - 1e-6
    assert high.emission_t <= low.emission_t + 1e-6
    # the small park buys no green certificates: accounted and modelled emissions agree
    assert accounted == pytest.approx([low.emission_t, high.emission_t])
