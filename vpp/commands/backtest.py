"""`vpp backtest`: run the park day by day through bids, clearing, control and settlement.

Writes `summary.json`, `intervals.csv` and PNG plots to the output folder, shows progress on
stderr and prints the headline figures as one JSON line. Definitions: docs/backtest.md.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import date
from pathlib import Path

from market.prices import read_prices
from vpp.backtest import (
    BacktestOptions,
    Follow,
    PriceForecast,
    Progress,
    run_backtest,
    write_outputs,
)
from vpp.carbon import grid_factor, indicators_path_for, load_indicators
from vpp.config import load_park
from vpp.errors import ConfigError, Problem

NAME = "backtest"
HELP = "simulate N market days: forecast, bids, clearing, real-time control, settlement"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park YAML file")
    parser.add_argument(
        "--prices",
        type=Path,
        default=None,
        help="CSV timestamp,price (ISO 8601 with offset; per MWh; hourly values are held over "
        "their quarter-hours). Default: a seeded synthetic provincial spot series",
    )
    parser.add_argument("--days", type=int, default=1, help="market days to simulate (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=None,
        help="first market day YYYY-MM-DD (default: the first whole day of the prices, or "
        "2025-06-02 for synthetic prices)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of prices, noise and weather")
    parser.add_argument(
        "--control-period",
        type=float,
        default=60.0,
        help="control loop period in simulated seconds; divides the market interval (default 60)",
    )
    parser.add_argument(
        "--price-forecast",
        choices=[p.value for p in PriceForecast],
        default=PriceForecast.NOISY.value,
        help="prices the park plans at: noisy actual (default), last week's, or perfect",
    )
    parser.add_argument(
        "--price-noise",
        type=float,
        default=0.1,
        help="noise of the noisy price forecast, share of the day's mean price (default 0.1)",
    )
    parser.add_argument(
        "--bid-offsets",
        default=None,
        help="relative price shifts the bid curves are sampled at, comma-separated "
        "(default: -1,-0.5,-0.25,-0.1,0,0.1,0.25,0.5,1 and the market's floor and cap)",
    )
    parser.add_argument(
        "--scenario-time-limit",
        type=float,
        default=10.0,
        help="solver time limit per bid scenario and for following the awards, s (default 10)",
    )
    parser.add_argument(
        "--follow",
        choices=[f.value for f in Follow],
        default=Follow.CLEARED.value,
        help="schedule behind the awards: re-plan at the cleared prices (default), re-plan "
        "with the awards as target, or keep the plan",
    )
    parser.add_argument(
        "--warmup-days",
        type=int,
        default=None,
        help="days of local control metered before the first bid day (default: as many as "
        "the DR product's baseline needs, e.g. 7 for the last 5 working days; 0 without DR)",
    )
    parser.add_argument(
        "--no-dr",
        action="store_true",
        help="do not offer the park's demand-response product (spot market only)",
    )
    parser.add_argument(
        "--no-asset-plans",
        action="store_true",
        help="the control loop follows the aggregate target alone, not the schedule's power "
        "of batteries, thermal loads and EV depots",
    )
    parser.add_argument(
        "--indicators",
        type=Path,
        default=None,
        help="indicator thresholds for carbon accounting (default: indicators.yaml beside CONFIG)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _offsets(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError([Problem("--bid-offsets", None, "", f"not numbers: {text!r}")]) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError([Problem("--bid-offsets", None, "", "need finite numbers")])
    return values


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    offsets = _offsets(args.bid_offsets)
    options = BacktestOptions(
        days=args.days,
        start=args.start,
        seed=args.seed,
        control_period_s=args.control_period,
        price_forecast=PriceForecast(args.price_forecast),
        price_noise_fraction=args.price_noise,
        bid_offsets=offsets,
        bid_bounds=offsets is None,
        scenario_time_limit_s=args.scenario_time_limit,
        follow=Follow(args.follow),
        demand_response=not args.no_dr,
        asset_plans=not args.no_asset_plans,
        warmup_days=args.warmup_days,
    )
    prices = read_prices(args.prices) if args.prices is not None else None
    indicators_path = args.indicators or indicators_path_for(args.config)
    indicators = load_indicators(indicators_path) if Path(indicators_path).is_file() else None
    factor = grid_factor(park.carbon, Path(args.config).parent, park.timezone)
    progress = None if args.quiet else Progress(args.days)
    result = run_backtest(
        loaded, options, prices, factor=factor, indicators=indicators, progress=progress
    )
    files = write_outputs(result, args.out)
    summary = result.summary
    headline = {
        key: summary[key]
        for key in (
            "days",
            "revenue",
            "optimum_revenue",
            "capture_ratio",
            "tracking_score",
            "within_5pct_share",
            "penalties",
            "cost",
            "dr_revenue",
            "dr_penalties",
            "carbon_t",
            "wall_s",
        )
    }
    headline["dr_events"] = len(summary["dr_events"])
    headline["out"] = str(args.out)
    headline["files"] = [f.name for f in files]
    print(json.dumps(headline))
    return 0
