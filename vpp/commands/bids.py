"""`vpp bids`: one market day's bid curves and DR offers, written as a `vpp.submission/1` file.

Forecasts the park, builds the dispatch problem at the day's prices, solves it under shifted
price scenarios to get a price-quantity curve per interval, and offers the flexibility envelope
to the park's demand-response product. Prints one JSON line that summarises the run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from dispatch.bids import BidOptions, build_dr_offers, curves_from_samples, sample_bid_points
from dispatch.flexibility import build_envelope, notice_of
from dispatch.forecast import ForecastOptions, forecast_at, forecast_park
from dispatch.problem import build_problem
from dispatch.series import FloatArray, Horizon
from dispatch.solve import SolveOptions
from market.formats import Submission, write_submission
from market.prices import read_prices, synthetic_prices
from market.validate import BidRule, dr_offer_errors, spot_bid_errors
from vpp.config import load_park
from vpp.domain import BidCurve, DrOffer, Interval
from vpp.errors import ConfigError, Problem, VPPError

NAME = "bids"
HELP = "build one day's bid curves and DR offers and write them as a submission file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park YAML file")
    parser.add_argument(
        "--prices",
        type=Path,
        default=None,
        help="CSV timestamp,price (per MWh) covering the day (default: a synthetic day shape)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="submission file to write (.json or .csv)"
    )
    parser.add_argument(
        "--day",
        type=date.fromisoformat,
        default=None,
        help="market day YYYY-MM-DD in the market's timezone (default: tomorrow)",
    )
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help="CSV of measured power: a timestamp column, then one kW column per asset id",
    )
    parser.add_argument(
        "--offsets",
        default=None,
        help="price shifts to solve at, per MWh, comma-separated (default: scaled to the prices)",
    )
    parser.add_argument(
        "--scenario-time-limit",
        type=float,
        default=10.0,
        help="solver time limit per price scenario, s (default 10)",
    )
    parser.add_argument(
        "--no-dr", action="store_true", help="leave demand-response offers out of the file"
    )
    parser.add_argument(
        "--dr-quantile",
        type=float,
        default=0.1,
        choices=[0.1, 0.5, 0.9],
        help="forecast quantile DR offers are built on (default 0.1: low load, high PV)",
    )


def day_horizon(day: date, timezone: str, interval: timedelta) -> Horizon:
    """Every interval of one local market day (counted in real time across DST changes)."""
    tz = ZoneInfo(timezone)
    start = datetime.combine(day, datetime.min.time(), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tz).astimezone(UTC)
    return Horizon(start, interval, int((end - start) // interval))


def parse_offsets(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError([Problem("--offsets", None, "", f"not numbers: {text!r}")]) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError([Problem("--offsets", None, "", "need finite numbers")])
    return values


def read_history(path: Path) -> pd.DataFrame:
    """Wide history CSV: `timestamp` (ISO 8601 with offset) and one column per asset, in kW."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {err}")]) from None
    if frame.shape[1] < 2:
        raise ConfigError([Problem(str(path), 1, "", "expected timestamp and asset columns")])
    stamps = frame.columns[0]
    text = frame[stamps].astype(str).str.strip()
    naive = ~text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
    if naive.any():
        line = int(np.flatnonzero(naive.to_numpy())[0]) + 2  # header is line 1
        raise ConfigError(
            [Problem(str(path), line, str(stamps), "timestamp has no UTC offset (e.g. +08:00)")]
        )
    try:
        index = pd.DatetimeIndex(pd.to_datetime(frame[stamps], utc=True, format="ISO8601"))
    except (ValueError, TypeError) as err:
        raise ConfigError([Problem(str(path), None, str(stamps), str(err))]) from None
    values = pd.DataFrame(
        {str(column): pd.to_numeric(frame[column], errors="coerce") for column in frame.columns[1:]}
    )
    values.index = index
    return values


def _local(interval: Interval, tz: ZoneInfo) -> Interval:
    return Interval(interval.start.astimezone(tz), interval.length)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    offsets = parse_offsets(args.offsets)
    if args.scenario_time_limit <= 0:
        raise ConfigError([Problem("--scenario-time-limit", None, "", "must be positive")])
    loaded = load_park(args.config, args.markets)
    park, spot = loaded.park, loaded.spot
    tz = spot.tz
    day = args.day or (datetime.now(tz).date() + timedelta(days=1))
    horizon = day_horizon(day, spot.timezone, spot.interval)
    prices: FloatArray
    if args.prices is not None:
        prices = read_prices(args.prices).on(horizon)
        price_source = str(args.prices)
    else:
        prices = synthetic_prices(horizon, seed=0)
        price_source = "synthetic"
    history = read_history(args.history) if args.history is not None else None

    forecast = forecast_park(
        park, horizon, history, options=ForecastOptions(working_day=spot.calendar.is_working_day)
    )
    problem = build_problem(park, horizon, prices, forecast)
    options = BidOptions(
        price_offsets_per_mwh=offsets,
        scenario_time_limit_s=args.scenario_time_limit,
    )
    samples = sample_bid_points(
        problem, spot, options=options, solve_options=SolveOptions.from_engine(park.engine)
    )
    curves = [
        BidCurve(_local(c.interval, tz), c.steps)
        for c in curves_from_samples(samples, spot, options)
    ]
    if not curves:
        failed = ", ".join(f"{offset:+g}: {status}" for offset, status in samples.failed)
        raise VPPError(f"no price scenario could be solved ({failed}); nothing written")

    offers: list[DrOffer] = []
    if loaded.dr is not None and not args.no_dr:
        # A firm offer holds in the low case too: build it on the forecast's low quantile.
        cautious = build_problem(park, horizon, prices, forecast_at(forecast, args.dr_quantile))
        envelope = build_envelope(cautious, notice_of(park))
        offers = [
            DrOffer(_local(o.interval, tz), o.reduction_kw, o.price_per_mwh)
            for o in build_dr_offers(envelope, loaded.dr)
        ]

    submitted_at = datetime.now(tz).replace(microsecond=0)
    errors = spot_bid_errors(curves, spot, submitted_at)
    if offers and loaded.dr is not None:
        errors += dr_offer_errors(offers, loaded.dr, submitted_at)
    late = [e for e in errors if e.rule is BidRule.GATE_CLOSURE]
    broken = [e for e in errors if e.rule is not BidRule.GATE_CLOSURE]
    if broken:
        raise VPPError(f"the bids break a market rule: {broken[0]}; nothing written")
    submission = Submission(spot.id, park.id, submitted_at, tuple(curves), tuple(offers))
    written = write_submission(submission, args.out)

    flexible = [c.steps[0].power_kw - c.steps[-1].power_kw for c in curves]
    summary = {
        "out": str(written),
        "market": spot.id,
        "dr_product": loaded.dr.id if loaded.dr is not None and not args.no_dr else None,
        "day": day.isoformat(),
        "intervals": horizon.intervals,
        "prices": price_source,
        "curves": len(curves),
        "price_responsive": sum(len(c.steps) > 1 for c in curves),
        "max_steps": max(len(c.steps) for c in curves),
        "max_flexible_kw": round(float(np.max(flexible)), 1),
        "dr_offers": len(offers),
        "dr_max_reduction_kw": round(max((o.reduction_kw for o in offers), default=0.0), 1),
        "solves": samples.solves,
        "warm_solves": samples.warm_solves,
        "failed_scenarios": [
            {"offset_per_mwh": offset, "status": status} for offset, status in samples.failed
        ],
        "solve_wall_s": round(samples.wall_s, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        "gate_open": not late,
    }
    print(json.dumps(summary))
    return 0
