"""`vpp validate CONFIG`: check an enrollment config and summarise the park it describes."""

from __future__ import annotations

import argparse

from vpp.assets import summarise
from vpp.config import load_park

NAME = "validate"
HELP = "validate an enrollment config and print a summary of the park"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="park YAML file")
    parser.add_argument(
        "--markets",
        default=None,
        help="folder of market rule sets (default: markets/ beside CONFIG)",
    )


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    summary = summarise(park)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.assets_by_kind.items()))
    total = sum(summary.assets_by_kind.values())
    print(f"{args.config}: ok — park '{park.id}' ({park.name}), timezone {park.timezone}")
    print(f"  enterprises: {summary.enterprises}")
    print(f"  assets: {total} ({kinds})")
    print(
        f"  flexibility: up {summary.up_kw / 1000:.1f} MW, down {summary.down_kw / 1000:.1f} MW, "
        f"shiftable energy {summary.energy_kwh / 1000:.1f} MWh "
        f"(storage {summary.storage_kwh / 1000:.1f} MWh usable, PV {summary.pv_kwp / 1000:.1f} MWp)"
    )
    dr = f", demand response '{loaded.dr.id}'" if loaded.dr is not None else ""
    print(
        f"  market: '{loaded.spot.id}' ({loaded.spot.currency}, {loaded.spot.interval_min}-min){dr}"
    )
    return 0
