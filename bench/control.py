"""Benchmark of the control loop: compute time per cycle and target-to-acks latency.

Each run prints one JSON line with at least `assets`, `cycle_ms` and `latency_p99_s`.

- `--transport inprocess` (default): simulated assets in the process on a manual clock. The
  target alternates every cycle so that every asset gets a new setpoint (the worst case);
  `cycle_ms` is the median compute time of those cycles, `latency_p99_s` the wall time from a
  target change to every setpoint acknowledged.
- `--transport mqtt`: the same park behind enterprise gateways (one per 100 assets) on a
  private Mosquitto (or `--broker HOST:PORT`), simulated devices answering over MQTT,
  wall-clock time. The device emulators run in `--device-processes` processes of their own
  (0: in the engine's event loop); `--no-set-batch` makes them gateways that take one
  setpoint per message (no batched setpoints or acks).

`--suite` runs the standard set: in-process at 1,000 and 10,000 assets, MQTT at 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.base import Adapter  # noqa: E402
from tests.parks import (  # noqa: E402
    BATTERY,
    COLD_STORE,
    EV_DEPOT,
    GENERATOR,
    PROCESS_LOAD,
    PV,
)
from vpp.clock import ManualClock, SystemClock  # noqa: E402
from vpp.config.schema import Park  # noqa: E402
from vpp.control import Controller, ControlOptions, CycleReport  # noqa: E402
from vpp.fleet import Fleet  # noqa: E402
from vpp.metrics import Metrics  # noqa: E402
from vpp.targets import TargetBook  # noqa: E402

# Wednesday 2024-06-05 10:00 in Shanghai.
START = datetime(2024, 6, 5, 2, 0, tzinfo=UTC)
ASSETS_PER_ENTERPRISE = 100


def enterprise_assets(e: int, connection: dict[str, Any]) -> list[dict[str, Any]]:
    """100 assets: 50 batteries, 10 PV, 15 process loads, 10 cold stores, 10 EV depots, 5 gens."""
    assets: list[dict[str, Any]] = []

    def add(spec: dict[str, Any], count: int) -> None:
        kind = spec["kind"]
        for k in range(count):
            assets.append({**spec, "id": f"e{e}-{kind}{k}", "connection": dict(connection)})

    add(BATTERY, 50)
    add(PV, 10)
    add(PROCESS_LOAD, 15)
    add(COLD_STORE, 10)
    add(EV_DEPOT, 10)
    add(GENERATOR, 5)
    return assets


def generated_park(assets: int, broker: tuple[str, int] | None = None) -> Park:
    """A park of `assets` (a multiple of 100) simulated assets, optionally behind MQTT gateways."""
    enterprises = []
    for e in range(max(assets // ASSETS_PER_ENTERPRISE, 1)):
        gateways: list[dict[str, Any]] = []
        if broker is None:
            connection: dict[str, Any] = {"adapter": "sim", "seed": e}
        else:
            host, port = broker
            gateways = [
                {
                    "id": f"gw{e}",
                    "connection": {"adapter": "mqtt", "host": host, "port": port},
                }
            ]
            connection = {"gateway": f"gw{e}"}
        enterprises.append(
            {
                "id": f"e{e}",
                "name": f"Enterprise {e}",
                "connection_limit_kw": 50_000,
                "gateways": gateways,
                "assets": enterprise_assets(e, connection),
            }
        )
    return Park.model_validate(
        {
            "id": "bench",
            "name": "Benchmark park",
            "location": {"latitude_deg": 31.23, "longitude_deg": 121.47},
            "grid_import_limit_kw": 500_000,
            "market": {"rule_set": "cn_provincial_spot"},
            "engine": {"control_period_s": 2.0, "setpoint_validity_s": 10},
            "enterprises": enterprises,
        }
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(round(q * (len(ordered) - 1)), len(ordered) - 1)
    return ordered[index]


def summary(
    transport: str, assets: int, reports: list[CycleReport], latencies: list[float]
) -> dict[str, Any]:
    cycle_ms = [r.compute_s * 1000 for r in reports]
    return {
        "bench": "control",
        "transport": transport,
        "assets": assets,
        "cycles": len(reports),
        "setpoints_per_cycle": round(statistics.median(r.setpoints for r in reports)),
        "cycle_ms": round(statistics.median(cycle_ms), 2),
        "cycle_ms_p95": round(percentile(cycle_ms, 0.95), 2),
        "cycle_ms_max": round(max(cycle_ms), 2),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_p99_s": round(percentile(latencies, 0.99), 4),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine may be shared
    }


async def _step(controller: Controller, targets: TargetBook, now: datetime, kw: float) -> float:
    """Change the target; wall seconds until the cycle it triggers has every ack."""
    done = controller.cycles_run
    began = time.perf_counter()
    targets.set_override(kw, now, now + timedelta(hours=1))
    await asyncio.wait_for(controller.wait_cycle(done), 30)
    await asyncio.wait_for(controller.wait_idle(), 30)
    return time.perf_counter() - began


async def run_inprocess(assets: int, steps: int) -> dict[str, Any]:
    from adapters.sim import SimAdapter

    park = generated_park(assets)
    clock = ManualClock(START)
    metrics = Metrics()
    fleet = Fleet(park, clock, metrics=metrics)
    sim = SimAdapter.from_park(park, clock, seed=1, cloudiness=0.0)
    targets = TargetBook()
    controller = Controller(park, fleet, dict.fromkeys(sim.asset_ids, sim), clock, metrics, targets)
    reports: list[CycleReport] = []
    latencies: list[float] = []
    # The park's enrollment is long-lived: keep the collector from rescanning it every pass
    # (a full pass over a 10,000-asset park takes longer than a cycle).
    gc.freeze()
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(sim.run(fleet), name="sim"),
            group.create_task(controller.run(), name="control"),
        ]
        for _ in range(3):  # telemetry for every asset
            done = controller.cycles_run
            await clock.advance(2.0)
            await controller.wait_cycle(done)
        base = fleet.aggregate().power_kw
        swing = 0.1 * assets * 100.0  # ±10 % of the battery rating, kW
        for k in range(steps):
            latencies.append(
                await _step(controller, targets, clock.now(), base + swing * (-1) ** k)
            )
            assert controller.last_report is not None
            reports.append(controller.last_report)
            done = controller.cycles_run
            await clock.advance(2.0)
            await controller.wait_cycle(done)
            await controller.wait_idle()
        for task in tasks:
            task.cancel()
    return summary("inprocess", assets, reports, latencies)


def device_emulators(
    park: Park, broker: tuple[str, int], enterprises: range, set_batch: bool
) -> list[Any]:
    """One gateway emulator per enterprise in `enterprises`, over the park's simulated assets."""
    from adapters.mqtt_device import MqttDeviceEmulator, sim_models

    clock = SystemClock()
    return [
        MqttDeviceEmulator(
            host=broker[0],
            port=broker[1],
            enterprise_id=park.enterprises[e].id,
            endpoint_id=f"gw{e}",
            devices=sim_models(park, {a.id: a.id for a in park.enterprises[e].assets}, seed=e),
            batched=True,
            period_s=2.0,
            clock=clock,
            set_batch=set_batch,
            client_id=f"bench-gw{e}",
        )
        for e in enterprises
    ]


async def _serve_devices(
    assets: int,
    broker: tuple[str, int],
    enterprises: range,
    set_batch: bool,
    ready: ProcessEvent,
    stop: ProcessEvent,
) -> None:
    park = generated_park(assets, broker)
    emulators = device_emulators(park, broker, enterprises, set_batch)
    gc.freeze()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(em.run(), name=f"device:{em.endpoint_id}") for em in emulators]
        await asyncio.gather(*(em.connected.wait() for em in emulators))
        ready.set()
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()


def device_process(
    assets: int,
    broker: tuple[str, int],
    enterprises: range,
    set_batch: bool,
    ready: ProcessEvent,
    stop: ProcessEvent,
) -> None:
    """A process running some of the gateway emulators until `stop` is set."""
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve_devices(assets, broker, enterprises, set_batch, ready, stop))


@contextlib.contextmanager
def device_processes(
    assets: int, broker: tuple[str, int], processes: int, set_batch: bool
) -> Iterator[None]:
    """Start the emulators in `processes` processes, wait until all are connected, stop them."""
    gateways = max(assets // ASSETS_PER_ENTERPRISE, 1)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = []
    readies = []
    for k in range(processes):
        share = range(k, gateways, processes)
        ready = context.Event()
        worker = context.Process(
            target=device_process, args=(assets, broker, share, set_batch, ready, stop)
        )
        worker.start()
        workers.append(worker)
        readies.append(ready)
    try:
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError("device emulators did not connect within 60 s")
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
                worker.join()


async def run_mqtt(
    assets: int,
    steps: int,
    broker: tuple[str, int],
    in_flight: int,
    device_procs: int = 1,
    set_batch: bool = True,
) -> dict[str, Any]:
    from adapters.mqtt import mqtt_adapters

    park = generated_park(assets, broker)
    clock = SystemClock()
    metrics = Metrics()
    fleet = Fleet(park, clock, metrics=metrics)
    adapters = list(mqtt_adapters(park, clock, metrics))
    routes: dict[str, Adapter] = {a: adapter for adapter in adapters for a in adapter.asset_ids}
    targets = TargetBook()
    options = ControlOptions(max_in_flight_per_adapter=in_flight, send_timeout_s=5.0)
    controller = Controller(park, fleet, routes, clock, metrics, targets, options=options)
    gateways = range(max(assets // ASSETS_PER_ENTERPRISE, 1))
    emulators = [] if device_procs else device_emulators(park, broker, gateways, set_batch)
    reports: list[CycleReport] = []
    latencies: list[float] = []
    gc.freeze()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(em.run(), name=f"device:{em.endpoint_id}") for em in emulators]
        tasks += [group.create_task(a.run(fleet), name=f"adapter:{a.name}") for a in adapters]
        for _ in range(300):  # up to a minute for every device to report
            if fleet.aggregate().available == len(fleet):
                break
            await asyncio.sleep(0.2)
        tasks.append(group.create_task(controller.run(), name="control"))
        await asyncio.sleep(0.5)
        base = fleet.aggregate().power_kw
        swing = 0.1 * assets * 100.0
        for k in range(steps):
            latencies.append(
                await _step(controller, targets, clock.now(), base + swing * (-1) ** k)
            )
            assert controller.last_report is not None
            reports.append(controller.last_report)
            await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
    result = summary("mqtt", assets, reports, latencies)
    result["acked"] = controller.acked
    result["refused"] = controller.refused
    result["in_flight"] = in_flight
    result["set_messages"] = sum(getattr(a, "set_messages", 0) for a in adapters)
    result["device_processes"] = device_procs
    result["set_batch"] = set_batch
    return result


def _mqtt(
    assets: int,
    steps: int,
    broker: tuple[str, int],
    in_flight: int,
    device_procs: int,
    set_batch: bool,
) -> dict[str, Any]:
    if device_procs == 0:
        return asyncio.run(run_mqtt(assets, steps, broker, in_flight, 0, set_batch))
    with device_processes(assets, broker, device_procs, set_batch):
        return asyncio.run(run_mqtt(assets, steps, broker, in_flight, device_procs, set_batch))


def run_one(
    transport: str,
    assets: int,
    steps: int,
    broker: str | None,
    in_flight: int = 256,
    device_procs: int = 1,
    set_batch: bool = True,
) -> dict[str, Any]:
    if transport == "inprocess":
        return asyncio.run(run_inprocess(assets, steps))
    if broker is not None:
        host, port = broker.rsplit(":", 1)
        return _mqtt(assets, steps, (host, int(port)), in_flight, device_procs, set_batch)
    from tests.brokers import MosquittoProcess, mosquitto_available

    if not mosquitto_available():
        return _mqtt(assets, steps, ("127.0.0.1", 1883), in_flight, device_procs, set_batch)
    with tempfile.TemporaryDirectory() as folder, MosquittoProcess(Path(folder)) as mosquitto:
        result = _mqtt(
            assets, steps, (mosquitto.host, mosquitto.port), in_flight, device_procs, set_batch
        )
    result["broker"] = "mosquitto"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=1000, help="multiple of 100")
    parser.add_argument("--steps", type=int, default=20, help="target changes measured")
    parser.add_argument("--transport", choices=("inprocess", "mqtt"), default="inprocess")
    parser.add_argument("--broker", default=None, help="HOST:PORT of an MQTT broker to use")
    parser.add_argument(
        "--in-flight", type=int, default=256, help="MQTT: setpoints awaiting acks per adapter"
    )
    parser.add_argument(
        "--device-processes",
        type=int,
        default=1,
        help="MQTT: processes running the device emulators (0: in the engine's event loop)",
    )
    parser.add_argument(
        "--no-set-batch",
        action="store_true",
        help="MQTT: gateways take one setpoint per message (no batched setpoints or acks)",
    )
    parser.add_argument("--suite", action="store_true", help="run the standard set")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    runs = (
        [("inprocess", 1000), ("inprocess", 10_000), ("mqtt", 1000)]
        if args.suite
        else [(args.transport, args.assets)]
    )
    for transport, assets in runs:
        result = run_one(
            transport,
            assets,
            args.steps,
            args.broker,
            args.in_flight,
            args.device_processes,
            not args.no_set_batch,
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
