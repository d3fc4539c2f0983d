"""Benchmark of MQTT telemetry ingest: readings per second into the fleet, one engine process.

Each run prints one JSON line with at least `mode` (`unbatched`: one message per device
reading, `batched`: one message per gateway with `--batch` readings), `readings_per_s`,
`reference_per_s` (the same stream received by Debian's C client `mosquitto_sub`), `ratio` and
`lost` (readings published with QoS 1 that never reached the fleet), and the same per CPU
second of the receiving process (`readings_per_cpu_s`, `reference_per_cpu_s`): on a shared
machine the wall-clock rates say how much CPU the run got, these say what a core would take.

Method, on a private Mosquitto on a free loopback port:
1. the engine's adapter (fixed client id, persistent session) and a `mosquitto_sub`
   persistent session subscribe, then go away; the broker queues for both;
2. publisher processes (paho, `--publishers` of them) publish the stream and exit;
3. the engine process connects and drains its queue through adapters.mqtt into a real
   vpp.fleet.Fleet (with metrics); the rate is counted from the first to the last reading;
4. `mosquitto_sub` drains its copy of the same queue, timed from process start to exit.
Publishing before draining keeps the publishers' CPU out of the measurement on a small
machine; the engine still does all of its per-message work.

`--suite` runs the standard set (`make bench`): unbatched QoS 1 and QoS 0, batched QoS 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.mqtt import MqttAdapter, mqtt_adapters  # noqa: E402
from tests.brokers import MOSQUITTO_SUB, MosquittoProcess, mosquitto_available  # noqa: E402
from vpp.clock import SystemClock  # noqa: E402
from vpp.config.schema import Park  # noqa: E402
from vpp.domain import Measurement  # noqa: E402
from vpp.fleet import Fleet  # noqa: E402
from vpp.metrics import Metrics  # noqa: E402

PREFIX = "bench"
ENGINE_ID = "bench-engine"
REFERENCE_ID = "bench-reference"
ENTERPRISES = 10
GOALS_PER_S = {"unbatched": 20_000, "batched": 200_000}
BROKER_CONFIG = (
    "max_queued_messages 0",  # no limit: the whole run waits in the sessions' queues
    "max_queued_bytes 0",
    "queue_qos0_messages true",  # QoS 0 runs are queued too, so they can be drained
    "max_inflight_messages 1000",
    "max_keepalive 3600",
)


def build_park(port: int, devices: int, batch: int, mode: str, qos: int) -> Park:
    """`devices` batteries in ENTERPRISES enterprises, on MQTT directly or behind gateways."""
    connection = {
        "adapter": "mqtt",
        "port": port,
        "protocol": "3.1.1",  # a persistent session is resumed on the first connect
        "topic_prefix": PREFIX,
        "client_id": ENGINE_ID,
        "telemetry_qos": qos,
        "keepalive_s": 600,
    }
    enterprises = []
    per_enterprise = max(devices // ENTERPRISES, 1)
    for e in range(ENTERPRISES):
        assets: list[dict[str, Any]] = []
        gateways: list[dict[str, Any]] = []
        for i in range(per_enterprise):
            asset: dict[str, Any] = {
                "id": f"d{e}-{i}",
                "kind": "battery",
                "power_kw": 100,
                "capacity_kwh": 200,
            }
            if mode == "batched":
                asset["connection"] = {"gateway": f"gw{e}-{i // batch}"}
            else:
                asset["connection"] = connection
            assets.append(asset)
        if mode == "batched":
            gateway_count = (per_enterprise + batch - 1) // batch
            gateways = [
                {"id": f"gw{e}-{g}", "connection": connection} for g in range(gateway_count)
            ]
        enterprises.append(
            {
                "id": f"e{e}",
                "name": f"Enterprise {e}",
                "connection_limit_kw": 1e5,
                "gateways": gateways,
                "assets": assets,
            }
        )
    return Park.model_validate(
        {
            "id": "bench",
            "name": "Ingest benchmark",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 4e5,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": enterprises,
        }
    )


def stream_plan(park: Park, mode: str) -> list[tuple[str, list[str]]]:
    """(topic, device ids in its payload) for every endpoint of the park."""
    plan: dict[str, list[str]] = {}
    for enterprise, asset in park.iter_assets():
        connection = asset.connection
        gateway = getattr(connection, "gateway", None)
        if mode == "batched" and gateway is not None:
            plan.setdefault(f"{PREFIX}/{enterprise.id}/{gateway}/batch", []).append(asset.id)
        else:
            plan[f"{PREFIX}/{enterprise.id}/{asset.id}/telemetry"] = [asset.id]
    return list(plan.items())


def publish_worker(
    port: int, qos: int, plan: Sequence[tuple[str, Sequence[str]]], rounds: int, name: str
) -> None:
    """A publisher process: `rounds` messages per endpoint, fresh timestamps, then exit."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = 0
    lock = threading.Condition()

    def on_publish(*_: Any) -> None:
        nonlocal done
        with lock:
            done += 1
            lock.notify_all()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port, keepalive=600)
    client.loop_start()
    sent = 0
    for r in range(rounds):
        for topic, ids in plan:
            ts = round(time.time(), 3)
            if len(ids) == 1 and topic.endswith("/telemetry"):
                body = b'{"ts":%.3f,"power_kw":%.2f,"soc":0.5}' % (ts, (r % 50) - 25.0)
            else:
                power = (r % 50) - 25.0
                readings = ",".join(f'{{"id":"{i}","power_kw":{power:.2f},"soc":0.5}}' for i in ids)
                body = b'{"v":1,"ts":%.3f,"readings":[%s]}' % (ts, readings.encode())
            client.publish(topic, body, qos)
            sent += 1
            if sent % 1000 == 0:  # message ids are 16 bits: keep the window well below that
                window = sent - 20_000
                with lock:
                    lock.wait_for(lambda: done > window)  # noqa: B023  (used at once)
    with lock:
        lock.wait_for(lambda: done >= sent, timeout=120)
    client.loop_stop()
    client.disconnect()


class CountingFleet:
    """The real fleet as the sink, with the time of the first and last accepted reading."""

    def __init__(self, fleet: Fleet, expected: int) -> None:
        self.fleet = fleet
        self.expected = expected
        self.received = 0
        self.first_at: float | None = None
        self.last_at = 0.0
        self.done = asyncio.Event()

    def accept(self, adapter: str, measurements: Sequence[Measurement]) -> int:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.received += len(measurements)
        accepted = self.fleet.accept(adapter, measurements)
        if self.received >= self.expected:
            self.done.set()
        return accepted

    def reject(self, adapter: str, reason: str, detail: str) -> None:
        self.fleet.reject(adapter, reason, detail)

    def set_available(self, asset_id: str, available: bool, at: datetime) -> None:
        self.fleet.set_available(asset_id, available, at)


async def register_engine(adapter: MqttAdapter) -> None:
    """Connect once so the broker keeps a session (and queues) for the engine."""
    fleet = CountingFleet(Fleet(build_park(1, 1, 1, "unbatched", 0), SystemClock()), 1)
    task = asyncio.create_task(adapter.run(fleet))
    async with asyncio.timeout(10):
        while adapter.health().state.value != "connected":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def drain(adapter: MqttAdapter, sink: CountingFleet, idle_s: float) -> None:
    task = asyncio.create_task(adapter.run(sink))
    try:
        last = -1
        while not sink.done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s):
                    await sink.done.wait()
            if sink.received == last:
                break  # nothing new for idle_s: the rest is lost
            last = sink.received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(
    mode: str,
    qos: int,
    devices: int,
    rounds: int,
    batch: int,
    publishers: int,
    fleet_metrics: bool = True,
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="vpp-bench-ingest-") as tmp,
        MosquittoProcess(Path(tmp), extra_config=BROKER_CONFIG) as broker,
    ):
        park = build_park(broker.port, devices, batch, mode, qos)
        plan = stream_plan(park, mode)
        (adapter,) = mqtt_adapters(park, SystemClock(), None)
        topics = [f"{PREFIX}/+/+/telemetry", f"{PREFIX}/+/+/batch"]
        reference_args = [MOSQUITTO_SUB, "-h", broker.host, "-p", str(broker.port)]
        reference_args += ["-c", "-i", REFERENCE_ID, "-q", str(qos)]
        for t in topics:
            reference_args += ["-t", t]
        subprocess.run([*reference_args, "-E"], check=True, timeout=10)
        asyncio.run(register_engine(adapter))

        messages = len(plan) * rounds
        readings = sum(len(ids) for _, ids in plan) * rounds
        context = multiprocessing.get_context("spawn")
        shares = [plan[k::publishers] for k in range(publishers)]
        started = time.perf_counter()
        workers = [
            context.Process(
                target=publish_worker,
                args=(broker.port, qos, share, rounds, f"bench-pub-{k}"),
            )
            for k, share in enumerate(shares)
            if share
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        publish_s = time.perf_counter() - started

        metrics = Metrics()
        fleet = Fleet(park, SystemClock(), stale_after_s=3600.0, metrics=metrics)
        sink = CountingFleet(fleet, readings)
        (engine,) = mqtt_adapters(park, SystemClock(), metrics)
        cpu_started = time.process_time()
        asyncio.run(drain(engine, sink, idle_s=10.0))
        engine_cpu_s = time.process_time() - cpu_started
        span = (sink.last_at - sink.first_at) if sink.first_at is not None else 0.0
        engine_per_s = sink.received / span if span > 0 else 0.0

        started = time.perf_counter()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [*reference_args, "-C", str(messages)],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        reference_s = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        reference_cpu_s = (after.ru_utime + after.ru_stime) - (
            children.ru_utime + children.ru_stime
        )
        reference_per_s = readings / reference_s
    lost = readings - sink.received
    return {
        "bench": "ingest",
        "mode": mode,
        "qos": qos,
        "devices": sum(len(ids) for _, ids in plan),
        "readings_per_message": readings // messages,
        "messages": messages,
        "readings": readings,
        "received": sink.received,
        "accepted": fleet.accepted,
        "rejected": fleet.rejected,
        "lost": lost if qos == 1 else max(lost, 0),
        "readings_per_s": round(engine_per_s),
        "messages_per_s": round(engine_per_s * messages / readings),
        "reference_per_s": round(reference_per_s),
        "ratio": round(engine_per_s / reference_per_s, 3) if reference_per_s else None,
        # Per CPU second of the receiving process: what a core of its own would take,
        # whatever else the machine was doing.
        "engine_cpu_s": round(engine_cpu_s, 2),
        "readings_per_cpu_s": round(sink.received / engine_cpu_s) if engine_cpu_s else None,
        "reference_cpu_s": round(reference_cpu_s, 2),
        "reference_per_cpu_s": round(readings / reference_cpu_s) if reference_cpu_s else None,
        "goal_per_s": GOALS_PER_S[mode],
        "goal_met": engine_per_s >= GOALS_PER_S[mode] and (qos == 0 or lost == 0),
        "publish_s": round(publish_s, 2),
        "publishers": len(workers),
        "sink": "fleet+metrics" if fleet_metrics else "fleet",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine may be shared
    }


SUITE = (
    ("unbatched", 1, 1000, 100, 1),
    ("unbatched", 0, 1000, 100, 1),
    ("batched", 1, 1000, 1000, 100),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("unbatched", "batched"), default="unbatched")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50, help="messages per endpoint")
    parser.add_argument("--batch", type=int, default=100, help="readings per gateway message")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument(
        "--no-fleet-metrics",
        action="store_true",
        help="fleet without Prometheus metrics (to see what the per-reading metrics cost)",
    )
    parser.add_argument("--suite", action="store_true", help="run the standard set")
    args = parser.parse_args(argv)
    if not mosquitto_available():
        print(json.dumps({"bench": "ingest", "error": "mosquitto not installed"}))
        return 1
    runs = SUITE if args.suite else ((args.mode, args.qos, args.devices, args.rounds, args.batch),)
    for mode, qos, devices, rounds, batch in runs:
        result = run(mode, qos, devices, rounds, batch, args.publishers, not args.no_fleet_metrics)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
