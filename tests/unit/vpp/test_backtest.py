"""The backtest end to end on the small park, and its parts: clock, prices, costs, progress."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from dispatch.series import Horizon
from market.prices import PriceSeries
from vpp.backtest import (
    BacktestError,
    BacktestOptions,
    BacktestResult,
    PriceForecast,
    Progress,
    SteppedClock,
    forecast_prices,
    operating_cost,
    run_backtest,
    synthetic_series,
    warmup_days_for,
    write_outputs,
)
from vpp.cli import main
from vpp.config import LoadedConfig, load_park
from vpp.config.schema import Park

SMALL_PARK = "tests/fixtures/small_park.yaml"
TZ = ZoneInfo("Asia/Shanghai")
MARKETS = "config/markets"
PLOTS = ("schedule_vs_delivered.png", "bids_vs_prices.png", "revenue_per_enterprise.png")
# Short solves and a coarse loop keep a simulated day to a few seconds.
FAST = BacktestOptions(
    days=2,
    control_period_s=300.0,
    bid_offsets=(-0.5, 0.5),
    bid_bounds=False,
    scenario_time_limit_s=2.0,
)


# The small park, allowed to export, with a diesel set too dear for the spot market: the
# flexibility the spot award leaves it for demand response.
DR_PARK = """
id: small-dr
name: Small test park with demand response
timezone: Asia/Shanghai
location: {latitude_deg: 31.23, longitude_deg: 121.47}
grid_import_limit_kw: 5000
grid_export_limit_kw: 2000
market: {rule_set: cn_provincial_spot, dr_product: cn_peak_valley_dr}
enterprises:
  - id: ent-a
    name: Enterprise A
    connection_limit_kw: 3000
    assets:
      - {id: bat-a, kind: battery, power_kw: 500, capacity_kwh: 1000}
      - {id: pv-a, kind: pv, capacity_kwp: 800}
      - id: load-a
        kind: curtailable_load
        profile: {weekday_kw: [400, 400, 400, 400, 400, 400, 600, 800, 900, 900, 900, 900,
                               800, 900, 900, 900, 900, 800, 700, 600, 500, 450, 400, 400]}
        max_reduction_kw: 300
  - id: ent-b
    name: Enterprise B
    connection_limit_kw: 2000
    export_limit_kw: 1000
    assets:
      - {id: shift-b, kind: shiftable_load, power_kw: 200, energy_per_run_kwh: 400,
         windows: ["00:00-08:00", "22:00-24:00"]}
      - {id: cold-b, kind: thermal_load, rated_power_kw: 150, cop: 2.5,
         thermal_capacity_kwh_per_k: 200, loss_kw_per_k: 4, temp_min_c: -22, temp_max_c: -16,
         ambient_c: 25}
      - {id: ev-b, kind: ev_charging, chargers: 10, charger_power_kw: 60,
         sessions: [{arrival: "08:00", departure: "17:00", energy_kwh: 300}]}
      - {id: gen-b, kind: generator, min_kw: 100, max_kw: 500, fuel_cost_per_mwh: 900,
         emission_kg_per_kwh: 0.55}
      - {id: diesel-b, kind: generator, min_kw: 200, max_kw: 800, fuel_cost_per_mwh: 2000,
         emission_kg_per_kwh: 0.7}
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedConfig:
    path = tmp_path_factory.mktemp("park") / "park.yaml"
    path.write_text(DR_PARK, encoding="utf-8")
    config = load_park(path, markets_dir=MARKETS)
    assert config.dr is not None
    # Under 1 MW is left beside the spot award: the product's 1 MW minimum is lowered.
    return dataclasses.replace(config, dr=config.dr.model_copy(update={"min_response_kw": 200}))


@pytest.fixture(scope="module")
def two_days(
    loaded: LoadedConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BacktestResult, Path]:
    stream = io.StringIO()
    result = run_backtest(loaded, FAST, progress=Progress(FAST.days, stream=stream))
    out = tmp_path_factory.mktemp("backtest")
    write_outputs(result, out)
    assert "100.0%" in stream.getvalue()  # the bar reached its end
    return result, out


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "intervals.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([float(r[name]) for r in rows])


# --- end to end ---------------------------------------------------------------------------------


def test_writes_the_summary_the_intervals_and_three_plots(
    two_days: tuple[BacktestResult, Path],
) -> None:
    _, out = two_days
    for name in ("summary.json", "intervals.csv", *PLOTS):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    required = (
        "revenue",
        "cost",
        "optimum_revenue",
        "capture_ratio",
        "tracking_score",
        "within_5pct_share",
        "penalties",
        "carbon_t",
    )
    for key in required:
        assert isinstance(summary[key], float), key
        assert math.isfinite(summary[key]), key
    assert summary["days"] == 2
    assert summary["intervals"] == 192
    assert len(_rows(out)) == 192


def test_revenue_and_penalties_are_the_sums_of_the_settled_intervals(
    two_days: tuple[BacktestResult, Path],
) -> None:
    _, out = two_days
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rows = _rows(out)
    assert summary["revenue"] == pytest.approx(_column(rows, "revenue").sum(), rel=1e-9, abs=1e-6)
    assert summary["optimum_revenue"] == pytest.approx(
        _column(rows, "optimum_revenue").sum(), rel=1e-9, abs=1e-6
    )
    assert summary["penalties"] == pytest.approx(_column(rows, "penalty").sum(), rel=1e-9, abs=1e-6)
    # Revenue is what the metered energy cost less than under local control.
    assert summary["revenue"] == pytest.approx(
        summary["baseline_energy_cost"] - summary["energy_cost"], rel=1e-9, abs=1e-6
    )
    # Each interval: (baseline - delivered) kW over a quarter-hour at the clearing price.
    price, delivered, baseline = (
        _column(rows, n) for n in ("price_per_mwh", "delivered_kw", "baseline_kw")
    )
    np.testing.assert_allclose(
        _column(rows, "revenue"), (baseline - delivered) * 0.25 / 1000 * price, atol=1e-6
    )
    assert summary["energy_kwh"] == pytest.approx(delivered.sum() * 0.25, rel=1e-9)


def test_ratios_follow_their_definitions(two_days: tuple[BacktestResult, Path]) -> None:
    result, out = two_days
    summary = result.summary
    rows = _rows(out)
    assert summary["optimum_revenue"] != 0
    assert summary["capture_ratio"] == pytest.approx(
        summary["revenue"] / summary["optimum_revenue"], rel=1e-12
    )
    awarded, delivered = _column(rows, "awarded_kw"), _column(rows, "delivered_kw")
    target = _column(rows, "target_kw")
    np.testing.assert_allclose(target, awarded - _column(rows, "dr_reduction_kw"))
    tracking = 1 - np.mean(np.abs(delivered - target)) / np.mean(np.abs(target))
    assert summary["tracking_score"] == pytest.approx(tracking, rel=1e-9)
    within = np.array([r["within_5pct"] == "True" for r in rows])
    assert summary["within_5pct_share"] == pytest.approx(within.mean())
    assert 0.0 <= summary["within_5pct_share"] <= 1.0
    assert summary["tracking_score"] <= 1.0
    # The loop does follow the awards: far better than doing nothing (tracking 0 or below).
    assert summary["tracking_score"] > 0.3


def test_enterprises_add_up_to_the_park(two_days: tuple[BacktestResult, Path]) -> None:
    result, _ = two_days
    summary = result.summary
    enterprises = summary["enterprises"]
    assert set(enterprises) == {"ent-a", "ent-b"}
    for key in ("revenue", "cost", "optimum_revenue", "energy_kwh", "dr_revenue", "dr_penalties"):
        total = sum(e[key] for e in enterprises.values())
        assert total == pytest.approx(summary[key], rel=1e-9, abs=1e-6), key


# --- demand response ---------------------------------------------------------------------------


def test_the_warm_up_holds_the_working_days_the_baseline_needs(loaded: LoadedConfig) -> None:
    assert loaded.dr is not None
    # Monday 2 June 2025 is Dragon Boat day and the weekend before it a holiday too: the last
    # five working days before Tuesday 3 June are 26-30 May, eight days back.
    assert warmup_days_for(date(2025, 6, 3), loaded.dr) == 8
    assert warmup_days_for(date(2025, 6, 2), loaded.dr) == 7
    assert warmup_days_for(date(2025, 6, 13), loaded.dr) == 7  # Friday: back to Friday 6 June


def test_demand_response_is_offered_called_and_settled(
    two_days: tuple[BacktestResult, Path], loaded: LoadedConfig
) -> None:
    result, out = two_days
    summary = result.summary
    assert summary["dr_product"] == "cn_peak_valley_dr"
    assert summary["warmup_days"] == 7  # Monday 26 May to Sunday 1 June
    # Monday 2 June is a holiday: its baseline needs five non-working days, the warm-up has two.
    assert list(summary["dr_skipped_days"]) == ["2025-06-02"]
    assert "non-working" in summary["dr_skipped_days"]["2025-06-02"]
    events = summary["dr_events"]
    assert events  # the grid calls the park at Tuesday's price peak
    assert {e["start"].astimezone(TZ).date() for e in events} == {date(2025, 6, 3)}
    # DR money is the sum of what the events settled, and it adds to the net revenue.
    assert summary["dr_revenue"] == pytest.approx(sum(e["payment"] for e in events), rel=1e-12)
    assert summary["dr_penalties"] == pytest.approx(sum(e["penalty"] for e in events), rel=1e-12)
    assert summary["dr_revenue"] > 0
    assert summary["total_net_revenue"] == pytest.approx(
        summary["net_revenue"] + summary["dr_revenue"] - summary["dr_penalties"], rel=1e-12
    )
    # The product's terms by hand: paid up to 120 % of the target when at least half is
    # delivered, short of 80 % the gap to 80 % is charged, all at the call price, which is
    # the product's cap (the grid pays its DR product's price).
    assert loaded.dr is not None
    for event in events:
        hours = (event["end"] - event["start"]).total_seconds() / 3600
        target, delivered = event["target_kwh"], event["delivered_kwh"]
        assert target == pytest.approx(event["reduction_kw"] * hours)
        assert event["price_per_mwh"] == loaded.dr.bid_price_cap_per_mwh == 3000
        ratio = delivered / target
        assert event["performance_ratio"] == pytest.approx(ratio)
        credited = min(delivered, 1.2 * target) if ratio >= 0.5 else 0.0
        assert event["payment"] == pytest.approx(credited / 1000 * 3000, abs=1e-6)
        shortfall = 0.8 * target - max(delivered, 0.0) if ratio < 0.8 else 0.0
        assert event["penalty"] == pytest.approx(shortfall / 1000 * 3000, abs=1e-6)
        shares = event["enterprises"].values()
        assert sum(e["payment"] for e in shares) == pytest.approx(event["payment"], abs=1e-6)
        assert sum(e["penalty"] for e in shares) == pytest.approx(event["penalty"], abs=1e-6)
    # The settlement meters the park's delivered power, and in an event's intervals the
    # target is the award less the reduction called.
    rows = {r["start"]: r for r in _rows(out)}
    reductions = []
    for settled in result.dr_settlements:
        event = next(e for e in events if e["event_id"] == settled.event_id)
        for line in (i for i in settled.intervals if i.site == "park"):
            row = rows[line.interval.start.astimezone(TZ).isoformat()]
            assert float(row["delivered_kw"]) == pytest.approx(line.metered_kw, rel=1e-9)
            assert float(row["dr_reduction_kw"]) == pytest.approx(event["reduction_kw"])
            reductions.append(float(row["awarded_kw"]) - float(row["delivered_kw"]))
    # The loop delivers the reduction on top of the award.
    assert np.mean(reductions) > 0.5 * np.mean([e["reduction_kw"] for e in events])


def test_awards_are_what_the_bid_curves_offer_at_the_clearing_price(
    two_days: tuple[BacktestResult, Path],
) -> None:
    result, _ = two_days
    assert len(result.bid_curves) == len(result.intervals)
    for curve, row in zip(result.bid_curves, result.intervals, strict=True):
        assert curve.interval.start == row.start
        assert curve.power_at(row.price_per_mwh) == pytest.approx(row.awarded_kw)
        assert row.bid_min_kw <= row.awarded_kw <= row.bid_max_kw


def test_every_day_ran_a_cycle_per_control_period(two_days: tuple[BacktestResult, Path]) -> None:
    result, _ = two_days
    assert [d.day for d in result.days] == [date(2025, 6, 2), date(2025, 6, 3)]
    for day in result.days:
        assert day.control_cycles == 96 * 3  # 15-min intervals, 300 s period
        assert day.optimum_status == "optimal"
    assert result.summary["controller"]["setpoints_sent"] > 0
    assert result.summary["carbon_t"] > 0


def test_the_cli_reads_hourly_prices_and_holds_them_over_quarter_hours(
    tmp_path: Path,
) -> None:
    prices = tmp_path / "prices.csv"
    day = datetime(2025, 6, 4, tzinfo=UTC) - timedelta(hours=8)  # 2025-06-04 00:00 +08:00
    lines = ["timestamp,price"]
    for hour in range(24):
        stamp = (day + timedelta(hours=hour)).astimezone().isoformat()
        lines.append(f"{stamp},{100 + 10 * hour}")
    prices.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        [
            "backtest",
            "--config", SMALL_PARK,
            "--markets", MARKETS,
            "--prices", str(prices),
            "--days", "1",
            "--out", str(out),
            "--control-period", "300",
            "--bid-offsets", "0",
            "--scenario-time-limit", "2",
            "--price-forecast", "perfect",
            "--no-dr",
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    rows = _rows(out)
    assert len(rows) == 96
    assert rows[0]["start"].startswith("2025-06-04T00:00:00+08:00")
    price = _column(rows, "price_per_mwh")
    np.testing.assert_array_equal(price, np.repeat(100 + 10 * np.arange(24), 4))
    np.testing.assert_array_equal(_column(rows, "forecast_price_per_mwh"), price)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["first_day"] == "2025-06-04"
    assert summary["price_forecast"] == "perfect"
    # Spot market only: no warm-up, no DR.
    assert summary["warmup_days"] == 0
    assert summary["dr_product"] is None
    assert (summary["dr_events"], summary["dr_revenue"], summary["dr_penalties"]) == ([], 0, 0)


def test_the_cli_refuses_a_period_that_does_not_divide_the_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["backtest", "--config", SMALL_PARK, "--markets", MARKETS, "--out", str(tmp_path),
         "--control-period", "7", "--quiet"]
    )  # fmt: skip
    assert code == 1
    assert "does not divide the 15-min market interval" in capsys.readouterr().err


# --- parts --------------------------------------------------------------------------------------


async def test_the_stepped_clock_wakes_sleepers_only_when_told() -> None:
    start = datetime(2025, 6, 2, tzinfo=UTC)
    clock = SteppedClock(start)
    woke: list[datetime] = []

    async def sleeper() -> None:
        await clock.sleep(60)
        woke.append(clock.now())

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    clock.set(start + timedelta(seconds=60))
    await asyncio.sleep(0)
    assert woke == []  # time moved, nobody woken yet
    clock.wake()
    await asyncio.wait_for(task, 1)
    assert woke == [start + timedelta(seconds=60)]
    with pytest.raises(ValueError, match="back in time"):
        clock.set(start)


def test_price_forecasts(loaded: LoadedConfig) -> None:
    rules = loaded.spot
    days = [date(2025, 6, 9)]
    series = synthetic_series(days, rules, seed=3)
    assert series.start == datetime(2025, 6, 2, tzinfo=UTC) - timedelta(hours=8)
    day = Horizon(series.start + timedelta(days=7), timedelta(minutes=15), 96)
    actual = series.on(day)
    rng = np.random.default_rng(1)
    perfect = forecast_prices(series, day, PriceForecast.PERFECT, 0.1, rng)
    np.testing.assert_array_equal(perfect, actual)
    week = forecast_prices(series, day, PriceForecast.LAST_WEEK, 0.1, rng)
    np.testing.assert_array_equal(week, series.price_per_mwh[:96])
    noisy = forecast_prices(series, day, PriceForecast.NOISY, 0.1, np.random.default_rng(1))
    again = forecast_prices(series, day, PriceForecast.NOISY, 0.1, np.random.default_rng(1))
    np.testing.assert_array_equal(noisy, again)
    spread = float(np.std(noisy - actual))
    scale = 0.1 * float(np.mean(np.abs(actual)))
    assert 0.5 * scale < spread < 1.5 * scale
    assert np.all(series.price_per_mwh >= rules.price_floor_per_mwh)
    assert np.all(series.price_per_mwh <= rules.price_cap_per_mwh)


def test_last_week_needs_the_prices_of_last_week(loaded: LoadedConfig) -> None:
    start = datetime(2025, 6, 2, tzinfo=UTC) - timedelta(hours=8)
    series = PriceSeries(start, timedelta(minutes=15), np.full(96 * 2, 300.0))
    day = Horizon(start + timedelta(days=1), timedelta(minutes=15), 96)
    with pytest.raises(Exception, match="not the horizon"):
        forecast_prices(series, day, PriceForecast.LAST_WEEK, 0.1, np.random.default_rng(0))


def _park(assets: list[dict[str, Any]]) -> Park:
    return Park.model_validate(
        {
            "id": "t",
            "name": "t",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 10_000,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {"id": "e", "name": "E", "connection_limit_kw": 10_000, "assets": assets}
            ],
        }
    )


def test_operating_cost_by_hand() -> None:
    park = _park(
        [
            {"id": "b", "kind": "battery", "power_kw": 100, "capacity_kwh": 200,
             "degradation_cost_per_mwh": 20},
            {"id": "pv", "kind": "pv", "capacity_kwp": 100, "curtailment_cost_per_mwh": 10},
            {"id": "l", "kind": "curtailable_load", "max_reduction_kw": 50, "cost_per_mwh": 100,
             "terms": {"compensation_per_mwh": 50},
             "profile": {"weekday_kw": [100] * 24}},
            {"id": "g", "kind": "generator", "max_kw": 100, "fuel_cost_per_mwh": 800,
             "startup_cost": 30, "emission_kg_per_kwh": 0.5},
        ]
    )  # fmt: skip
    assets = [a for _, a in park.iter_assets()]
    # Two hour-long intervals.
    power = np.array(
        [
            [100.0, -50.0],  # battery: 150 kWh throughput
            [-20.0, -80.0],  # PV: 30 kWh below its 50 kW available in the first hour
            [60.0, 100.0],  # load: 40 kWh below its 100 kW baseline
            [0.0, -100.0],  # generator: one start, 100 kWh
        ]
    )
    baseline = np.array([[0.0, 0.0], [-50.0, -80.0], [100.0, 100.0], [0.0, 0.0]])
    cost = operating_cost(assets, power, baseline, hours=1.0)
    np.testing.assert_allclose(
        cost, [150 / 1000 * 20, 30 / 1000 * 10, 40 / 1000 * 150, 100 / 1000 * 800 + 30]
    )
    two_starts = operating_cost(assets, power, baseline, hours=1.0, starts=[0, 0, 0, 2])
    assert two_starts[3] == pytest.approx(100 / 1000 * 800 + 60)


def test_options_are_checked() -> None:
    with pytest.raises(BacktestError, match="at least 1"):
        BacktestOptions(days=0)
    with pytest.raises(BacktestError, match="outside"):
        BacktestOptions(control_period_s=600)


def test_progress_prints_one_line_per_update_off_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(4, stream=stream, width=8)
    progress.update(1, "day 1")
    progress.update(4, "done")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "[##......]" in lines[0] and "25.0%" in lines[0] and "day 1" in lines[0]
    assert "[########]" in lines[1] and "100.0%" in lines[1]
