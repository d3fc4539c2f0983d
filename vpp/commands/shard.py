"""`vpp shard`: run one shard of a park (its enterprises only, or a shared-subscription worker)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import replace

from vpp.control import ControlOptions
from vpp.errors import ConfigError, Problem
from vpp.shard import (
    SHARD_CONTROL_OPTIONS,
    LinkSettings,
    Shard,
    ShardMap,
    ShardOptions,
    load_shard_config,
    mqtt_connection_of,
)
from vpp.store import Store

NAME = "shard"
HELP = "run one shard of a park, reporting to and steered by a coordinator (docs/scale-out.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park config (YAML, or JSON for big parks)")
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument("--id", required=True, dest="shard_id", help="this shard's id")
    owner = parser.add_mutually_exclusive_group(required=True)
    owner.add_argument("--map", default=None, help="static enterprise-to-shard map (YAML)")
    owner.add_argument(
        "--shared-group",
        default=None,
        help="enroll the whole park and read telemetry through the MQTT 5 shared subscription "
        "$share/GROUP/... (needs a broker that keeps each topic with one member)",
    )
    parser.add_argument(
        "--broker", default=None, help="HOST:PORT of the coordination broker (default: the park's)"
    )
    parser.add_argument(
        "--prefix", default=None, help="coordination topic prefix (default: the park's)"
    )
    parser.add_argument(
        "--store", default=None, help="storage URL for telemetry history (default: keep none)"
    )
    parser.add_argument("--report-period", type=float, default=2.0, help="seconds between reports")
    parser.add_argument(
        "--fleet-deadband",
        type=float,
        default=SHARD_CONTROL_OPTIONS.fleet_deadband_fraction,
        help="fraction of the shard's span that small setpoint changes held back may add up to "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=SHARD_CONTROL_OPTIONS.max_in_flight_per_adapter,
        help="setpoints awaiting an ack per adapter (default %(default)s)",
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--json", action="store_true", help="print the run summary as one JSON line"
    )


def control_options(args: argparse.Namespace) -> ControlOptions:
    """The shard's control options with the command line's deadband and sends in flight."""
    if not 0.0 <= args.fleet_deadband < 1.0:
        message = f"{args.fleet_deadband} is not a fraction in [0, 1)"
        raise ConfigError([Problem("--fleet-deadband", None, "", message)])
    if args.max_in_flight < 1:
        message = f"{args.max_in_flight} is not a positive count"
        raise ConfigError([Problem("--max-in-flight", None, "", message)])
    return replace(
        SHARD_CONTROL_OPTIONS,
        fleet_deadband_fraction=args.fleet_deadband,
        max_in_flight_per_adapter=args.max_in_flight,
    )


def run(args: argparse.Namespace) -> int:
    options = control_options(args)
    enterprises = None
    if args.map is not None:
        enterprises = ShardMap.load(args.map).enterprises_of(args.shard_id)
    config = load_shard_config(args.config, args.markets, enterprises)
    link = None
    if args.broker is not None or args.prefix is not None:
        connection = mqtt_connection_of(config.park)
        base = LinkSettings.of(connection) if connection is not None else LinkSettings()
        host, port = base.host, base.port
        if args.broker is not None:
            host, _, port_text = args.broker.rpartition(":")
            if not host or not port_text.isdigit():
                raise ConfigError(
                    [Problem("--broker", None, "", f"'{args.broker}' is not HOST:PORT")]
                )
            port = int(port_text)
        link = LinkSettings(
            host=host,
            port=port,
            prefix=args.prefix or base.prefix,
            protocol=base.protocol,
            username=base.username,
            password=base.password,
        )
    store = Store(args.store) if args.store is not None else None
    shard = Shard(
        args.shard_id,
        config,
        link=link,
        options=ShardOptions(
            report_period_s=args.report_period,
            shared_group=args.shared_group,
            control_options=options,
            store=store,
        ),
    )
    if not args.json:
        print(
            f"shard {args.shard_id}: {len(config.park.enterprises)} enterprises, "
            f"{len(shard.engine.fleet)} assets (pid {os.getpid()})",
            flush=True,
        )
    try:
        summary = asyncio.run(shard.run(args.duration))
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(summary.as_dict()), flush=True)
    else:
        print(
            f"shard {summary.shard_id}: {summary.readings} readings "
            f"({summary.readings_per_s:.0f}/s), {summary.cycles} cycles "
            f"(median {summary.cycle_ms_p50 or 0:.1f} ms), {summary.shares_received} shares, "
            f"{summary.reports_sent} reports"
        )
    return 0
