"""The network between the engine and its MQTT broker is cut mid-run, then restored.

A loopback TCP proxy stands between the engine's MQTT adapter and a private broker
(Mosquitto when installed, else the embedded one); devices talk to the broker directly.
While a device streams numbered QoS 1 readings, the proxy resets every engine connection
and refuses new ones for a while, then lets them through again. Checked: the adapter
reconnects with its persistent session, every reading the broker accepted during the cut
reaches the fleet, in order (a reading in flight at the cut may come twice: QoS 1), a setpoint sent during the cut is refused at
once as `disconnected` (not left hanging), and the acks of both sides of the cut are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from adapters._retry import Backoff
from adapters.mqtt import MqttAdapter, mqtt_adapters
from adapters.mqtt_device import MqttDeviceEmulator, sim_models
from tests.brokers import AmqttBroker, MosquittoProcess, free_port, mosquitto_available
from tests.reliability.conftest import eventually
from vpp.clock import SystemClock
from vpp.config.schema import Park
from vpp.domain import Measurement, Setpoint
from vpp.fleet import Fleet

pytestmark = pytest.mark.integration

READINGS = 150
RATE_HZ = 25.0
CUT_S = 2.0


class CuttableProxy:
    """Forwards TCP from a loopback port to the broker; `cut` resets and refuses, `restore` heals."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = True
        self.refused = 0
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Every link is reset (as a router dropping state would) and new ones are refused."""
        self.up = False
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.up = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._links.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def broker(tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    """A private broker: (port, newest MQTT version it speaks)."""
    if mosquitto_available():
        with MosquittoProcess(tmp_path / "mosquitto") as mosquitto:
            yield mosquitto.port, "5"
    else:
        async with AmqttBroker() as amqtt:
            yield amqtt.port, "3.1.1"


def park_behind(port: int, protocol: str) -> Park:
    connection = {
        "adapter": "mqtt",
        "port": port,
        "protocol": protocol,
        "client_id": f"engine-{uuid.uuid4().hex[:8]}",  # a persistent session
        "telemetry_qos": 1,
        "timeout_s": 2.0,
        "ack_timeout_s": 2.0,
    }
    return Park.model_validate(
        {
            "id": "cut",
            "name": "Network cut park",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 5000,
            "market": {"rule_set": "cn_provincial_spot"},
            "engine": {"telemetry_stale_s": 60},
            "enterprises": [
                {
                    "id": "ent-a",
                    "name": "A",
                    "connection_limit_kw": 3000,
                    "assets": [
                        {
                            "id": "bat-a",
                            "kind": "battery",
                            "power_kw": 500,
                            "capacity_kwh": 1000,
                            "connection": connection,
                        },
                        {
                            "id": "meter-b",
                            "kind": "curtailable_load",
                            "profile": {"weekday_kw": [400.0] * 24},
                            "max_reduction_kw": 100,
                            "connection": connection,
                        },
                    ],
                }
            ],
        }
    )


def setpoint(asset_id: str, power_kw: float) -> Setpoint:
    now = datetime.now(UTC)
    return Setpoint(asset_id, power_kw, now, now + timedelta(seconds=30), uuid.uuid4().hex)


@contextlib.contextmanager
def collected(fleet: Fleet, asset_id: str) -> Iterator[list[float]]:
    """The power of every reading of `asset_id` the fleet accepts, in order."""
    seen: list[float] = []

    def listener(batch: list[Measurement]) -> None:
        seen.extend(m.power_kw for m in batch if m.asset_id == asset_id)

    fleet.listeners.append(listener)
    try:
        yield seen
    finally:
        fleet.listeners.remove(listener)


async def stream(port: int, protocol: str, published: list[int], cut_at: asyncio.Event) -> None:
    """A meter publishing READINGS numbered readings (power = number) straight to the broker."""
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client("127.0.0.1", port, protocol=version) as client:
        for n in range(READINGS):
            body = b'{"ts": %f, "power_kw": %d}' % (datetime.now(UTC).timestamp(), n)
            await client.publish("vpp/ent-a/meter-b/telemetry", body, qos=1)  # PUBACK awaited
            published.append(n)
            if n == READINGS // 3:
                cut_at.set()
            await asyncio.sleep(1.0 / RATE_HZ)


async def test_network_cut_loses_no_accepted_reading_and_keeps_acks(tmp_path: Path) -> None:
    async with broker(tmp_path) as (broker_port, protocol):
        proxy = CuttableProxy(broker_port)
        await proxy.start()
        park = park_behind(proxy.port, protocol)
        fleet = Fleet(park, SystemClock())
        (adapter,) = mqtt_adapters(park, SystemClock())
        assert isinstance(adapter, MqttAdapter)
        adapter.backoff = Backoff(base_s=0.2, cap_s=0.4)
        device = MqttDeviceEmulator(
            host="127.0.0.1",
            port=broker_port,
            enterprise_id="ent-a",
            endpoint_id="bat-a",
            devices=sim_models(park, {"bat-a": "bat-a"}),
            protocol=protocol,
            period_s=3600.0,  # telemetry is the meter's job here
        )
        published: list[int] = []
        cut_at = asyncio.Event()
        figures: dict[str, Any] = {}
        with collected(fleet, "meter-b") as seen:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(adapter.run(fleet), name="engine-mqtt"),
                    group.create_task(device.run(), name="device"),
                ]
                await eventually(lambda: adapter.health().state.value == "connected", 10)
                await asyncio.wait_for(device.connected.wait(), 10)
                before = await adapter.send(setpoint("bat-a", -120.0))
                assert before.accepted
                group.create_task(stream(broker_port, protocol, published, cut_at), name="meter")
                await asyncio.wait_for(cut_at.wait(), 30)

                proxy.cut()
                cut_began = time.monotonic()
                await eventually(lambda: adapter.health().state.value != "connected", 5)
                figures["detected_s"] = time.monotonic() - cut_began
                started = time.monotonic()
                during = await adapter.send(setpoint("bat-a", -60.0))
                figures["refusal_s"] = time.monotonic() - started
                assert (during.accepted, during.reason) == (False, "disconnected")
                await asyncio.sleep(CUT_S)
                received_at_cut = len(seen)

                proxy.restore()
                restored = time.monotonic()
                await eventually(lambda: adapter.health().state.value == "connected", 15)
                figures["reconnect_s"] = time.monotonic() - restored
                await eventually(lambda: len(published) == READINGS, 30)
                await eventually(lambda: len(seen) >= READINGS, 15)
                figures["backlog_s"] = time.monotonic() - restored
                after = await adapter.send(setpoint("bat-a", -80.0))
                for task in tasks:
                    task.cancel()
        await proxy.stop()

    lost = sorted(set(published) - {int(p) for p in seen})
    assert lost == []
    # In order; QoS 1 is at least once: a reading in flight when the link broke may come
    # twice (the broker resends what it had no PUBACK for), never out of order.
    distinct = [int(p) for k, p in enumerate(seen) if k == 0 or p != seen[k - 1]]
    assert distinct == list(range(READINGS))
    redelivered = len(seen) - len(distinct)
    assert redelivered <= 2
    assert fleet.rejected == 0
    assert received_at_cut < READINGS  # the cut really held readings back
    assert adapter.health().reconnects >= 1
    assert proxy.refused >= 1  # the adapter did try while the link was down
    assert after.accepted and after.applied_power_kw == pytest.approx(-80.0)
    # acks on both sides of the cut are kept by the adapter
    assert adapter.acknowledged["bat-a"].correlation_id == after.correlation_id
    assert before.correlation_id != after.correlation_id
    print(
        f"\nnetwork cut ({protocol}): cut seen in {figures['detected_s']:.2f} s, setpoint during "
        f"the cut refused in {figures['refusal_s'] * 1000:.0f} ms, reconnected "
        f"{figures['reconnect_s']:.2f} s after the link came back, {READINGS} readings all "
        f"delivered {figures['backlog_s']:.2f} s after it ({READINGS - received_at_cut} held "
        f"during the {CUT_S:g} s cut), lost {len(lost)}, redelivered {redelivered}, reconnect "
        f"attempts refused {proxy.refused}"
    )
