"""`vpp run`: run the engine on a park until interrupted (or for a bounded time)."""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime
from pathlib import Path

from adapters.factory import build_adapters
from market.prices import read_prices
from vpp.clock import AcceleratedClock, Clock, SystemClock
from vpp.config import load_park
from vpp.engine import Engine, EngineOptions, RunSummary
from vpp.metrics import Metrics
from vpp.planner import PriceSource
from vpp.store import Store

NAME = "run"
HELP = "run the engine on a park (Ctrl-C or SIGTERM stops it cleanly)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park YAML file")
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument(
        "--listen", default=None, help="HOST:PORT for the API and dashboard (overrides config)"
    )
    parser.add_argument("--no-api", action="store_true", help="do not serve the API and dashboard")
    parser.add_argument(
        "--prices", type=Path, default=None, help="price CSV (timestamp,price); default: synthetic"
    )
    parser.add_argument(
        "--no-plan", action="store_true", help="do not plan or bid (follow nothing)"
    )
    parser.add_argument("--store", default=None, help="storage URL (overrides config)")
    parser.add_argument("--no-store", action="store_true", help="keep nothing on disk")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="clock speed-up (simulated assets)"
    )
    parser.add_argument(
        "--start",
        type=datetime.fromisoformat,
        default=None,
        help="clock start, ISO 8601 with offset",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many clock seconds"
    )
    parser.add_argument(
        "--report-every", type=float, default=60.0, help="clock seconds between status lines"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the simulated assets and prices"
    )


def make_clock(speed: float, start: datetime | None) -> Clock:
    if speed == 1.0 and start is None:
        return SystemClock()
    origin = start if start is not None else SystemClock().now()
    if origin.tzinfo is None:
        raise SystemExit("--start needs a UTC offset, e.g. 2026-07-15T07:00:00+08:00")
    return AcceleratedClock(origin, speed)


def print_summary(summary: RunSummary) -> None:
    park = summary.park
    sim_h = (summary.ended_at - summary.started_at).total_seconds() / 3600
    print(
        f"run ended ({summary.reason}) after {summary.wall_s:.1f} s wall / {sim_h:.2f} h clock time; "
        f"readings accepted {summary.readings_accepted}, rejected {summary.readings_rejected}"
    )
    print(
        f"park power {park.power_kw / 1000:+.2f} MW; assets available {park.available}/{park.assets}, "
        f"stale {park.stale}, offline {park.offline}, degraded {park.degraded}, unknown {park.unknown}"
    )
    if summary.setpoints_sent:
        print(f"setpoints sent {summary.setpoints_sent}, acknowledged {summary.setpoints_acked}")
    share = summary.within_band_share
    if share is not None:
        judged = sum(1 for t in summary.intervals if t.error_ratio is not None)
        print(f"market intervals delivered within ±5% of target: {share:.0%} of {judged}")
    if summary.settlements:
        print(f"settlement lines: {summary.settlements}")
    for enterprise, agg in summary.enterprises.items():
        print(
            f"  {enterprise:<20} {agg.power_kw / 1000:+8.2f} MW  available {agg.available}/{agg.assets}"
        )


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    clock = make_clock(args.speed, args.start)
    metrics = Metrics()
    adapters = build_adapters(loaded.park, clock, seed=args.seed, metrics=metrics)
    prices = (
        None
        if args.no_plan
        else PriceSource(read_prices(args.prices) if args.prices else None, seed=args.seed)
    )
    # the URL may carry credentials, so it can come from the environment instead of the file
    url = args.store or os.environ.get("VPP_STORAGE_URL") or loaded.park.engine.storage_url
    store = None if args.no_store else Store(url)
    options = EngineOptions(
        prices=prices, serve_api=not args.no_api, listen=args.listen, store=store
    )
    engine = Engine(
        loaded, clock, adapters, options=options, report=print, report_every_s=args.report_every
    )
    try:
        summary = asyncio.run(engine.run(duration_s=args.duration))
    finally:
        if store is not None:
            store.close()
    print_summary(summary)
    return 0
