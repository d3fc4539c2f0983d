"""Benchmark of scale-out: N shard processes and a coordinator against one engine process.

Each run prints one JSON line. The park is generated into a temporary folder as JSON (the
enrollment schema; a YAML file of tens of thousands of assets takes minutes to parse):
enterprises of 100 devices (70 batteries of 10 kW / 20 kWh, 30 process loads of 10 kW of
which 3 kW curtailable), each behind one gateway that publishes one batched telemetry
message per period. On a private Mosquitto (MQTT 5):

1. device emulator processes (`adapters.mqtt_device`, `--emulators` of them) step the
   simulator's physics and answer setpoints; each gateway reports at its own phase within
   the telemetry period, as real gateways do;
2. shard processes (`vpp shard --map`, a static map that balances assets) each run an Engine
   with the MQTT adapter for their enterprises and the control loop following their share;
3. the coordinator process (`vpp coordinator --steps`) waits until every shard has fresh
   telemetry for its fleet, steps the park target (offsets from the park power then) and
   splits it by the headroom the shards report every period.
The same is then run with one shard owning every enterprise (`--compare`, the default).

Figures: readings/s accepted per shard and in total, control cycle compute time per shard
(median, p95, max), mean telemetry delay into the fleet, CPU seconds per process, and per
step the park tracking error at the step's end and the time to settle within 5 % of the
step (as seen by the coordinator from the shards' reports). The load average of the
machine is recorded at the start and the end: other work on the machine slows every figure.

The control period is the telemetry period unless `--control-period` says otherwise.
`--suite` runs the standard set: 3 shards and 1 process at 3,000 and at 30,000 devices.
`--profile DIR` runs every process under cProfile and writes `DIR/<process>.prof`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds modules named like the packages (bench/dispatch.py): the root goes first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from tests.brokers import MosquittoProcess, mosquitto_available  # noqa: E402
from vpp.config.schema import Park  # noqa: E402
from vpp.shard import ShardMap  # noqa: E402

PREFIX = "bench"
DEVICES_PER_ENTERPRISE = 100
BATTERIES = 70
BATTERY_KW = 10.0
LOAD_KW = 10.0
GOLDEN = (5**0.5 - 1) / 2
BROKER_CONFIG = (
    "max_queued_messages 100000",
    "max_inflight_messages 1000",
    "max_keepalive 3600",
)


def park_spec(
    devices: int, port: int, telemetry_period_s: float, control_period_s: float = 2.0
) -> dict[str, Any]:
    """A park of `devices` (a multiple of 100) devices, one gateway per enterprise."""
    enterprises = []
    for e in range(max(devices // DEVICES_PER_ENTERPRISE, 1)):
        via = {"gateway": f"gw{e}"}
        assets: list[dict[str, Any]] = [
            {
                "id": f"e{e}-b{k}",
                "kind": "battery",
                "power_kw": BATTERY_KW,
                "capacity_kwh": 2 * BATTERY_KW,
                "connection": via,
            }
            for k in range(BATTERIES)
        ]
        assets += [
            {
                "id": f"e{e}-l{k}",
                "kind": "curtailable_load",
                "profile": {"weekday_kw": [LOAD_KW] * 24, "weekend_kw": [LOAD_KW] * 24},
                "max_reduction_kw": 0.3 * LOAD_KW,
                "connection": via,
            }
            for k in range(DEVICES_PER_ENTERPRISE - BATTERIES)
        ]
        gateway = {
            "id": f"gw{e}",
            "connection": {
                "adapter": "mqtt",
                "port": port,
                "topic_prefix": PREFIX,
                "keepalive_s": 60,
                "ack_timeout_s": 10,
            },
        }
        enterprises.append(
            {
                "id": f"e{e}",
                "name": f"Enterprise {e}",
                "connection_limit_kw": 5000,
                "gateways": [gateway],
                "assets": assets,
            }
        )
    return {
        "id": "scaleout",
        "name": "Scale-out benchmark park",
        "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
        "grid_import_limit_kw": 500_000,
        "market": {"rule_set": "cn_provincial_spot"},
        "engine": {
            "control_period_s": control_period_s,
            # Long validity: a setpoint is re-sent every validity / 2 even when unchanged, and
            # 30,000 re-sends every 5 s would be most of the work on this machine.
            "setpoint_validity_s": 60,
            "telemetry_stale_s": max(30.0, 4 * telemetry_period_s),
        },
        "enterprises": enterprises,
    }


# --- the device emulator process ---------------------------------------------------------------


async def emulate(config: Path, enterprises: list[str], port: int, period_s: float) -> None:
    """Run the gateways of `enterprises` until SIGTERM; print their counters as JSON."""
    from adapters.mqtt_device import DeviceModel, MqttDeviceEmulator
    from adapters.sim import SimOptions, Site, make_model
    from vpp.config.schema import SimConnection
    from vpp.shard import load_shard_config

    park = load_shard_config(config, ROOT / "config" / "markets", enterprises).park
    site = Site.of(park)
    physics = SimConnection(telemetry_period_s=period_s, response_lag_s=2.0)
    gateways = []
    for enterprise in park.enterprises:
        seed = int(enterprise.id.removeprefix("e"))
        # Gateways report at their own phase within the period, as real ones do: the
        # readings of the park then reach the shards as a steady stream, not in bursts.
        phase_s = period_s * ((seed * GOLDEN) % 1.0)
        models: dict[str, DeviceModel] = {
            a.id: make_model(a, site, SimOptions(seed=seed, connection=physics))
            for a in enterprise.assets
        }
        gateways.append(
            MqttDeviceEmulator(
                host="127.0.0.1",
                port=port,
                prefix=PREFIX,
                enterprise_id=enterprise.id,
                endpoint_id=enterprise.gateways[0].id,
                devices=models,
                batched=True,
                period_s=period_s,
                telemetry_qos=0,
                phase_s=phase_s,
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    cpu = time.process_time()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(g.run(), name=f"gateway:{g.endpoint_id}") for g in gateways]
        for g in gateways:
            await g.connected.wait()
        print(json.dumps({"ready": len(gateways)}), flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
    stats = [g.stats for g in gateways]
    print(
        json.dumps(
            {
                "gateways": len(gateways),
                "devices": sum(len(g.devices) for g in gateways),
                "published": sum(s.published for s in stats),
                "setpoints": sum(s.setpoints for s in stats),
                "acked": sum(s.acked for s in stats),
                "refused": sum(s.refused for s in stats),
                "cpu_s": round(time.process_time() - cpu, 2),
            }
        ),
        flush=True,
    )


# --- one run -----------------------------------------------------------------------------------


def _python(profile: Path | None, name: str) -> list[str]:
    """The interpreter command, under cProfile writing `<profile>/<name>.prof` when asked."""
    if profile is None:
        return [sys.executable]
    return [sys.executable, "-m", "cProfile", "-o", str(profile / f"{name}.prof")]


def _read_json(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The last JSON line a process printed before exiting."""
    out, _ = process.communicate(timeout=timeout_s)
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return {"error": f"no JSON from pid {process.pid} (exit {process.returncode})"}


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run(
    devices: int,
    shards: int,
    *,
    emulators: int,
    telemetry_period_s: float,
    control_period_s: float,
    steps: str,
    hold_s: float,
    folder: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    load_before = os.getloadavg()
    started = time.monotonic()
    with MosquittoProcess(folder / f"broker-{shards}", extra_config=BROKER_CONFIG) as broker:
        spec = park_spec(devices, broker.port, telemetry_period_s, control_period_s)
        config = folder / "park.json"
        config.write_text(json.dumps(spec))
        park = Park.model_validate(spec)
        shard_map = ShardMap.balanced(park, shards)
        map_file = folder / f"shards-{shards}.yaml"
        shard_map.dump(map_file)
        enterprise_ids = [e.id for e in park.enterprises]
        logs = folder / f"logs-{shards}"
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        processes: list[subprocess.Popen[str]] = []
        try:
            devices_procs = []
            for k in range(emulators):
                part = enterprise_ids[k::emulators]
                if not part:
                    continue
                devices_procs.append(
                    subprocess.Popen(
                        [
                            *_python(profile, f"emulator-{shards}-{k}"),
                            str(Path(__file__).resolve()),
                            "--emulate",
                            str(config),
                            "--enterprises",
                            ",".join(part),
                            "--port",
                            str(broker.port),
                            "--period",
                            str(telemetry_period_s),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=(logs / f"emulator-{k}.log").open("w"),
                        text=True,
                        env=env,
                    )
                )
            processes += devices_procs
            for proc in devices_procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line.startswith("{"):
                    raise RuntimeError(f"emulator failed: {_tail(logs / 'emulator-0.log')}")
            shard_procs = {
                shard_id: subprocess.Popen(
                    [
                        *_python(profile, f"shard-{shards}-{shard_id}"),
                        "-m",
                        "vpp.cli",
                        "shard",
                        "--config",
                        str(config),
                        "--markets",
                        str(ROOT / "config" / "markets"),
                        "--id",
                        shard_id,
                        "--map",
                        str(map_file),
                        "--report-period",
                        "2",
                        "--json",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=(logs / f"shard-{shard_id}.log").open("w"),
                    text=True,
                    env=env,
                )
                for shard_id in shard_map.shards
            }
            processes += shard_procs.values()
            coordinator = subprocess.Popen(
                [
                    *_python(profile, f"coordinator-{shards}"),
                    "-m",
                    "vpp.cli",
                    "coordinator",
                    "--broker",
                    f"127.0.0.1:{broker.port}",
                    "--prefix",
                    PREFIX,
                    "--shards",
                    ",".join(shard_map.shards),
                    "--steps",
                    steps,
                    "--hold",
                    str(hold_s),
                    "--wait",
                    "240",
                    "--json",
                    "--timeline",
                ],
                stdout=subprocess.PIPE,
                stderr=(logs / "coordinator.log").open("w"),
                text=True,
                env=env,
            )
            processes.append(coordinator)
            coordination = _read_json(coordinator, timeout_s=600)
            load_during = os.getloadavg()
            for proc in shard_procs.values():
                proc.send_signal(signal.SIGTERM)
            shard_results = {s: _read_json(p, timeout_s=60) for s, p in shard_procs.items()}
            for proc in devices_procs:
                proc.send_signal(signal.SIGTERM)
            device_results = [_read_json(p, timeout_s=60) for p in devices_procs]
        finally:
            for proc in processes:
                if proc.poll() is None:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
    return summarise(
        devices,
        shards,
        telemetry_period_s,
        control_period_s,
        coordination,
        shard_results,
        device_results,
        load_before,
        load_during,
        time.monotonic() - started,
    )


def summarise(
    devices: int,
    shards: int,
    telemetry_period_s: float,
    control_period_s: float,
    coordination: dict[str, Any],
    shard_results: dict[str, dict[str, Any]],
    device_results: list[dict[str, Any]],
    load_before: tuple[float, float, float],
    load_during: tuple[float, float, float],
    wall_s: float,
) -> dict[str, Any]:
    steps = coordination.get("steps", [])
    moved = [s for s in steps if s.get("end_error_fraction") is not None]
    per_shard = {
        shard: {
            key: result.get(key)
            for key in (
                "assets",
                "readings_per_s",
                "cycles",
                "cycle_ms_p50",
                "cycle_ms_p95",
                "cycle_ms_max",
                "shares_received",
                "reports_sent",
                "setpoints_sent",
                "setpoints_acked",
                "telemetry_latency_s_mean",
                "setpoint_ack_latency_s_mean",
                "cpu_s",
                "wall_s",
            )
        }
        for shard, result in shard_results.items()
    }
    return {
        "bench": "scaleout",
        "devices": devices,
        "shards": shards,
        "telemetry_period_s": telemetry_period_s,
        "control_period_s": control_period_s,
        "offered_readings_per_s": round(devices / telemetry_period_s),
        "readings_per_s_total": round(
            sum(r.get("readings_per_s") or 0 for r in shard_results.values())
        ),
        "cycle_ms_p50_max": max(
            (r.get("cycle_ms_p50") or 0 for r in shard_results.values()), default=None
        ),
        "cycle_ms_p95_max": max(
            (r.get("cycle_ms_p95") or 0 for r in shard_results.values()), default=None
        ),
        "tracking_end_error_pct_max": round(
            100 * max((s["end_error_fraction"] for s in moved), default=0.0), 2
        )
        if moved
        else None,
        "settle_s_max": max(
            (s["settle_s"] for s in moved if s["settle_s"] is not None), default=None
        )
        if moved and all(s["settle_s"] is not None for s in moved)
        else None,
        "steps": steps,
        "per_shard": per_shard,
        "coordinator": {
            k: coordination.get(k)
            for k in (
                "ticks",
                "reports_received",
                "shares_sent",
                "saturated_ticks",
                "base_kw",
                "cpu_s",
                "error",
            )
        },
        "emulators": device_results,
        "cpu_s_engines": round(sum(r.get("cpu_s") or 0 for r in shard_results.values()), 1),
        "cpu_s_emulators": round(sum(r.get("cpu_s") or 0 for r in device_results), 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_end": [round(x, 2) for x in load_during],
        "cpus": os.cpu_count(),
        "wall_s": round(wall_s, 1),
        "timeline": coordination.get("timeline"),
    }


def default_steps(devices: int) -> str:
    """Hold, +10 % of the battery rating, -10 %, back: 25 s apart."""
    swing = round(0.1 * devices * BATTERIES / DEVICES_PER_ENTERPRISE * BATTERY_KW)
    return f"0:0,20:{swing},45:-{swing},70:0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3000, help="multiple of 100")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--no-compare", action="store_true", help="skip the one-process run")
    parser.add_argument("--emulators", type=int, default=2, help="device emulator processes")
    parser.add_argument("--period", type=float, default=2.0, help="telemetry period, seconds")
    parser.add_argument(
        "--control-period", type=float, default=None, help="seconds (default: the telemetry period)"
    )
    parser.add_argument("--steps", default=None, help="AT_S:KW,... (default: ±10 %% of batteries)")
    parser.add_argument("--hold", type=float, default=25.0, help="seconds after the last step")
    parser.add_argument("--timeline", action="store_true", help="keep every tick in the output")
    parser.add_argument("--suite", action="store_true", help="run the standard set")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run every process under cProfile, writing DIR/<process>.prof",
    )
    parser.add_argument("--emulate", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--enterprises", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.emulate is not None:
        asyncio.run(
            emulate(Path(args.emulate), args.enterprises.split(","), args.port, args.period)
        )
        return 0
    if not mosquitto_available():
        print(json.dumps({"bench": "scaleout", "error": "mosquitto not installed"}))
        return 1
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    sizes = [3000, 30_000] if args.suite else [args.devices]
    for devices in sizes:
        counts = [args.shards] if args.no_compare else [args.shards, 1]
        for shards in counts:
            with tempfile.TemporaryDirectory(prefix="vpp-bench-scaleout-") as tmp:
                result = run(
                    devices,
                    shards,
                    emulators=args.emulators,
                    telemetry_period_s=args.period,
                    control_period_s=args.control_period or args.period,
                    steps=args.steps or default_steps(devices),
                    hold_s=args.hold,
                    folder=Path(tmp),
                    profile=args.profile,
                )
            if not args.timeline:
                result.pop("timeline", None)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
