"""`vpp demo`: the demo park with simulated assets on an accelerated clock, for a bounded time.

The day is planned first (forecast, schedule, bids into the simulated market, DR offers), then
the engine follows the awards and DR events with the real-time control loop while the API and
dashboard serve the live state.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time as wall
from datetime import datetime, time, timedelta
from pathlib import Path

from adapters.factory import build_adapters
from market.prices import read_prices
from vpp.clock import AcceleratedClock, SystemClock
from vpp.commands.run import print_summary
from vpp.config import load_park
from vpp.engine import Engine, EngineOptions
from vpp.metrics import Metrics
from vpp.planner import PriceSource, day_horizon, plan_day
from vpp.store import Store

NAME = "demo"
HELP = "plan a day of the demo park, then follow it with simulated assets on an accelerated clock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/park.yaml", help="park YAML file")
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument(
        "--prices", type=Path, default=None, help="price CSV (default: synthetic, seeded)"
    )
    parser.add_argument("--speed", type=float, default=120.0, help="clock speed-up")
    parser.add_argument(
        "--wall-seconds", type=float, default=60.0, help="how long the live part runs"
    )
    parser.add_argument(
        "--start-hour", type=int, default=17, help="local hour of day the clock starts at"
    )
    parser.add_argument(
        "--listen", default=None, help="HOST:PORT of the dashboard (default: from config)"
    )
    parser.add_argument("--no-api", action="store_true", help="do not serve the API and dashboard")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the simulated assets and prices"
    )


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    today = SystemClock().now().astimezone(park.tz).date()
    prices = PriceSource(read_prices(args.prices) if args.prices else None, seed=args.seed)
    horizon = day_horizon(today, loaded)
    print(
        f"demo: planning {today} for park '{park.id}' ({len(park.iter_assets())} assets) ...",
        flush=True,
    )
    started = wall.perf_counter()
    plan = plan_day(loaded, horizon, prices.on(horizon))
    print(f"demo: planned in {wall.perf_counter() - started:.1f} s", flush=True)

    start = datetime.combine(today, time(args.start_hour % 24), tzinfo=park.tz)
    clock = AcceleratedClock(start, args.speed)
    duration_s = args.wall_seconds * args.speed
    print(
        f"demo: {len(park.iter_assets())} simulated assets, clock x{args.speed:g} from "
        f"{start:%Y-%m-%d %H:%M %Z}, {timedelta(seconds=duration_s)} of park time in {args.wall_seconds:g} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="vpp-demo-") as folder:
        store = Store(f"sqlite:///{Path(folder) / 'demo.db'}")
        store.migrate()
        options = EngineOptions(
            prices=prices,
            plan_today=False,
            plan_next_days=False,
            serve_api=not args.no_api,
            listen=args.listen,
            store=store,
        )
        metrics = Metrics()
        adapters = build_adapters(park, clock, seed=args.seed, metrics=metrics)
        engine = Engine(
            loaded,
            clock,
            adapters,
            options=options,
            metrics=metrics,
            report=print,
            report_every_s=15 * 60,
        )
        assert engine.planner is not None
        engine.planner.commit(plan, today, day_ahead=True)
        try:
            summary = asyncio.run(engine.run(duration_s=duration_s))
        finally:
            store.close()
    print_summary(summary)
    return 0
