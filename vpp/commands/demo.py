"""`vpp demo`: the demo park with simulated assets on an accelerated clock, for a bounded time."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, time, timedelta

from adapters.factory import build_adapters
from vpp.clock import AcceleratedClock, SystemClock
from vpp.commands.run import print_summary
from vpp.config import load_park
from vpp.engine import Engine

NAME = "demo"
HELP = "run the demo park with simulated assets on an accelerated clock, then summarise"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/park.yaml", help="park YAML file")
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument("--speed", type=float, default=120.0, help="clock speed-up")
    parser.add_argument("--wall-seconds", type=float, default=60.0, help="how long the demo runs")
    parser.add_argument(
        "--start-hour", type=int, default=7, help="local hour of day the clock starts at"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated assets")


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    today = SystemClock().now().astimezone(park.tz).date()
    start = datetime.combine(today, time(args.start_hour % 24), tzinfo=park.tz)
    clock = AcceleratedClock(start, args.speed)
    duration_s = args.wall_seconds * args.speed
    print(
        f"demo: park '{park.id}' with {len(park.iter_assets())} simulated assets, clock x{args.speed:g} "
        f"from {start:%Y-%m-%d %H:%M %Z}, {timedelta(seconds=duration_s)} of park time "
        f"in {args.wall_seconds:g} s"
    )
    adapters = build_adapters(park, clock, seed=args.seed)
    engine = Engine(loaded, clock, adapters, report=print, report_every_s=15 * 60)
    summary = asyncio.run(engine.run(duration_s=duration_s))
    print_summary(summary, park.timezone)
    return 0
