"""`vpp coordinator`: split the park target over the shards by their reported headroom."""

from __future__ import annotations

import argparse
import asyncio
import json

from vpp.coordinator import Coordinator, CoordinatorOptions, StepProgram
from vpp.errors import ConfigError, Problem
from vpp.shard import LinkSettings

NAME = "coordinator"
HELP = "coordinate shard engines: send each its share of the park target (docs/scale-out.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the broker")
    parser.add_argument("--prefix", default="vpp", help="the park's MQTT topic prefix")
    parser.add_argument(
        "--shards", default="", help="comma-separated ids of the shards to wait for (default: any)"
    )
    parser.add_argument("--period", type=float, default=2.0, help="seconds between splits")
    parser.add_argument(
        "--share-validity", type=float, default=6.0, help="seconds a share stays in force"
    )
    parser.add_argument(
        "--steps",
        default=None,
        help="stepped park target AT_S:KW,... (offsets from the park power at the start)",
    )
    parser.add_argument(
        "--absolute", action="store_true", help="--steps are park powers, not offsets"
    )
    parser.add_argument("--hold", type=float, default=20.0, help="seconds after the last step")
    parser.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for every shard's telemetry"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument("--timeline", action="store_true", help="include every tick in the JSON")


def run(args: argparse.Namespace) -> int:
    host, _, port_text = args.broker.rpartition(":")
    if not host or not port_text.isdigit():
        raise ConfigError([Problem("--broker", None, "", f"'{args.broker}' is not HOST:PORT")])
    shards = tuple(s for s in (p.strip() for p in args.shards.split(",")) if s)
    try:
        options = CoordinatorOptions(
            period_s=args.period,
            share_validity_s=args.share_validity,
            stale_after_s=args.share_validity,
            shards=shards,
        )
    except ValueError as err:
        raise ConfigError([Problem("--share-validity", None, "", str(err))]) from None
    program = None
    if args.steps is not None:
        program = StepProgram.parse(args.steps, relative=not args.absolute, hold_s=args.hold)
        program = StepProgram(
            program.steps, relative=program.relative, hold_s=program.hold_s, wait_s=args.wait
        )
    coordinator = Coordinator(
        LinkSettings(host=host, port=int(port_text), prefix=args.prefix), options=options
    )
    summary = asyncio.run(coordinator.run(args.duration, program))
    if args.json:
        print(json.dumps(summary.as_dict(with_timeline=args.timeline)), flush=True)
        return 0
    print(
        f"coordinator: {summary.ticks} ticks over {summary.wall_s:.0f} s; shards "
        + ", ".join(
            f"{s} ({summary.reports_received.get(s, 0)} reports, {summary.shares_sent.get(s, 0)} shares)"
            for s in summary.shards
        )
    )
    for step in summary.steps:
        fraction = "" if step.end_error_fraction is None else f" ({step.end_error_fraction:.1%})"
        settle = "never" if step.settle_s is None else f"{step.settle_s:.1f} s"
        print(
            f"  {step.label}: target {step.target_kw / 1000:+.3f} MW, end error "
            f"{step.end_error_kw:.1f} kW{fraction}, settled in {settle}"
        )
    return 0
