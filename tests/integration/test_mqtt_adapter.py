"""The MQTT adapter against real brokers: telemetry, setpoints and acks, status, bad payloads."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from adapters import payloads
from adapters._retry import Backoff
from adapters.mqtt import (
    NO_DELAY,
    MqttAdapter,
    MqttEndpoint,
    checked,
    mqtt_adapters,
    mqtt_endpoints,
)
from adapters.mqtt_device import MqttDeviceEmulator, sim_models
from tests.brokers import MosquittoProcess, make_tls, mosquitto_available
from tests.integration.conftest import BrokerInfo
from vpp.clock import SystemClock
from vpp.config.schema import Park
from vpp.domain import Availability, Measurement, Setpoint
from vpp.fleet import Fleet
from vpp.metrics import Metrics

pytestmark = pytest.mark.integration

WAIT_S = 5.0


def make_park(port: int, protocol: str, **mqtt: Any) -> Park:
    connection = {"adapter": "mqtt", "port": port, "protocol": protocol, **mqtt}
    return Park.model_validate(
        {
            "id": "p",
            "name": "MQTT test park",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 5000,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {
                    "id": "ent-a",
                    "name": "A",
                    "connection_limit_kw": 3000,
                    "gateways": [{"id": "gw-a", "connection": connection}],
                    "assets": [
                        {
                            "id": "bat-a",
                            "kind": "battery",
                            "power_kw": 500,
                            "capacity_kwh": 1000,
                            "connection": connection,
                        },
                        {
                            "id": "gen-a",
                            "kind": "generator",
                            "min_kw": 100,
                            "max_kw": 500,
                            "fuel_cost_per_mwh": 900,
                            "emission_kg_per_kwh": 0.55,
                            "connection": {"gateway": "gw-a", "device_id": "dg1"},
                        },
                        {
                            "id": "bat-b",
                            "kind": "battery",
                            "power_kw": 200,
                            "capacity_kwh": 400,
                            "connection": {"gateway": "gw-a"},
                        },
                    ],
                }
            ],
        }
    )


async def eventually(check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110  (polls state other tasks own)
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(*coroutines: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run background coroutines for the duration of the block, then cancel them.

    A coroutine that fails cancels the block and its error is raised.
    """
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(c) for c in coroutines]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()


def setpoint(asset_id: str, power_kw: float, valid_s: float = 30.0) -> Setpoint:
    now = datetime.now(UTC)
    return Setpoint(asset_id, power_kw, now, now + timedelta(seconds=valid_s), uuid.uuid4().hex)


def single_adapter(park: Park, metrics: Metrics | None = None) -> MqttAdapter:
    (adapter,) = mqtt_adapters(park, SystemClock(), metrics)
    return adapter


def emulators(park: Park, broker: BrokerInfo, **options: Any) -> list[MqttDeviceEmulator]:
    """The battery as a device of its own, and the gateway relaying for two assets."""
    common: dict[str, Any] = {"host": broker.host, "port": broker.port}
    common |= {"protocol": broker.protocol, "enterprise_id": "ent-a", "period_s": 0.1}
    return [
        MqttDeviceEmulator(
            endpoint_id="bat-a", devices=sim_models(park, {"bat-a": "bat-a"}), **common, **options
        ),
        MqttDeviceEmulator(
            endpoint_id="gw-a",
            devices=sim_models(park, {"gen-a": "dg1", "bat-b": "bat-b"}),
            batched=True,
            **common,
            **options,
        ),
    ]


def test_endpoints_follow_gateways_and_device_ids() -> None:
    park = make_park(1883, "5")
    (endpoints,) = mqtt_endpoints(park).values()
    assert sorted(endpoints, key=lambda e: e.asset_id) == [
        MqttEndpoint("bat-a", "ent-a", "bat-a", "bat-a"),
        MqttEndpoint("bat-b", "ent-a", "gw-a", "bat-b"),
        MqttEndpoint("gen-a", "ent-a", "gw-a", "dg1"),
    ]


async def test_device_and_gateway_telemetry_reach_the_fleet(broker: BrokerInfo) -> None:
    park = make_park(broker.port, broker.protocol)
    fleet = Fleet(park, SystemClock())
    adapter = single_adapter(park)
    devices = emulators(park, broker)
    async with running(adapter.run(fleet), *(d.run() for d in devices)):
        await eventually(lambda: all(fleet.latest(a) is not None for a in fleet.asset_ids))
        for asset_id in ("bat-a", "gen-a", "bat-b"):
            assert fleet.availability(asset_id) is Availability.AVAILABLE
    generator = fleet.latest("gen-a")
    assert generator is not None and -500.0 <= generator.power_kw <= 0.0
    assert adapter.health().state.value == "disconnected"  # cancelled: it said goodbye
    assert not adapter.rejections


async def test_setpoint_is_acked_with_the_applied_power(broker: BrokerInfo) -> None:
    park = make_park(broker.port, broker.protocol)
    fleet = Fleet(park, SystemClock())
    metrics = Metrics()
    adapter = single_adapter(park, metrics)
    devices = emulators(park, broker)
    async with running(adapter.run(fleet), *(d.run() for d in devices)):
        await eventually(lambda: adapter.health().state.value == "connected")
        await asyncio.gather(*(d.connected.wait() for d in devices))
        direct = await adapter.send(setpoint("bat-a", -200.0))
        relayed = await adapter.send(setpoint("gen-a", -300.0))
        too_much = await adapter.send(setpoint("bat-b", 10_000.0))
    assert direct.accepted and direct.asset_id == "bat-a"
    assert direct.applied_power_kw == pytest.approx(-200.0)
    assert relayed.accepted and relayed.asset_id == "gen-a"
    assert relayed.applied_power_kw == pytest.approx(-300.0)
    # the device clamps to what it can do and says so in the ack
    assert too_much.accepted and too_much.applied_power_kw is not None
    assert too_much.applied_power_kw <= 200.0
    assert adapter.acknowledged["gen-a"].correlation_id == relayed.correlation_id
    assert adapter.set_messages == 3  # one at a time: nothing to coalesce
    # the adapter counts only its own refusals; sent and acked are the control loop's
    refused = metrics.registry.get_sample_value(
        "vpp_setpoints_refused_total", {"adapter": "mqtt", "reason": "timeout"}
    )
    assert refused is None


async def test_setpoints_of_one_loop_turn_go_to_a_gateway_in_one_message(
    broker: BrokerInfo,
) -> None:
    park = make_park(broker.port, broker.protocol)
    fleet = Fleet(park, SystemClock())
    adapter = single_adapter(park)
    device, gateway = emulators(park, broker)
    gateway.refuse = lambda command: "local_override" if command.power_kw > 0 else None
    async with running(adapter.run(fleet), device.run(), gateway.run()):
        await eventually(lambda: adapter.health().state.value == "connected")
        await asyncio.gather(device.connected.wait(), gateway.connected.wait())
        # the gateway's retained status says it takes batches
        await eventually(lambda: adapter.takes_set_batch("gen-a"))
        sent = [setpoint("gen-a", -300.0), setpoint("bat-b", 50.0), setpoint("bat-a", -20.0)]
        acks = await asyncio.gather(*(adapter.send(s) for s in sent))
    # one message to the gateway for its two assets, one to the device
    assert adapter.set_messages == 2
    assert gateway.stats.setpoints == 2 and device.stats.setpoints == 1
    assert [a.correlation_id for a in acks] == [s.correlation_id for s in sent]
    assert [a.asset_id for a in acks] == ["gen-a", "bat-b", "bat-a"]
    assert acks[0].accepted and acks[0].applied_power_kw == pytest.approx(-300.0)
    assert (acks[1].accepted, acks[1].reason) == (False, "local_override")
    assert acks[2].accepted and acks[2].applied_power_kw == pytest.approx(-20.0)
    assert adapter.late_acks == 0 and not adapter.rejections


async def test_a_gateway_without_batch_support_gets_one_setpoint_per_message(
    broker: BrokerInfo,
) -> None:
    park = make_park(broker.port, broker.protocol)
    fleet = Fleet(park, SystemClock())
    adapter = single_adapter(park)
    device, gateway = emulators(park, broker, set_batch=False)
    async with running(adapter.run(fleet), device.run(), gateway.run()):
        await eventually(lambda: adapter.health().state.value == "connected")
        await gateway.connected.wait()
        await eventually(lambda: fleet.latest("gen-a") is not None)  # its status came first
        assert not adapter.takes_set_batch("gen-a")
        sent = [setpoint("gen-a", -250.0), setpoint("bat-b", -40.0)]
        acks = await asyncio.gather(*(adapter.send(s) for s in sent))
    assert adapter.set_messages == 2
    assert not gateway.stats.errors  # it never saw the batched form
    assert all(a.accepted for a in acks)
    assert [a.applied_power_kw for a in acks] == [pytest.approx(-250.0), pytest.approx(-40.0)]


async def test_a_batched_ack_resolves_each_send_and_bad_entries_are_rejected(
    broker: BrokerInfo,
) -> None:
    """A gateway written by someone else: it answers two setpoints in one batched ack."""
    park = make_park(broker.port, broker.protocol, ack_timeout_s=5.0)
    fleet = Fleet(park, SystemClock())
    adapter = single_adapter(park)
    first, second = setpoint("gen-a", -100.0), setpoint("bat-b", 30.0)
    at = datetime.now(UTC).timestamp()
    body = json.dumps(
        {
            "v": 1,
            "at": at,
            "acks": [
                {"id": first.correlation_id, "device": "dg1", "accepted": True},
                {
                    "id": second.correlation_id,
                    "device": "bat-b",
                    "accepted": False,
                    "reason": "local_override",
                },
                {"id": "unknown-id", "device": "bat-b", "accepted": True},
                {"device": "bat-b", "accepted": True},
            ],
        }
    ).encode()

    subscribed = asyncio.Event()

    async def answer_when_asked() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await checked(client.subscribe("vpp/ent-a/gw-a/set", 1))
            subscribed.set()
            answered = 0
            async for _ in client.messages:
                answered += 1
                if answered == 2:  # both setpoints arrived (one message each: no set_batch)
                    await checked(client.publish("vpp/ent-a/gw-a/ack", body, qos=1))

    async with running(adapter.run(fleet), answer_when_asked()):
        await eventually(lambda: adapter.health().state.value == "connected")
        await subscribed.wait()
        acks = await asyncio.gather(adapter.send(first), adapter.send(second))
        await eventually(lambda: adapter.late_acks == 1)
    assert acks[0].accepted and acks[0].asset_id == "gen-a"
    assert (acks[1].accepted, acks[1].reason) == (False, "local_override")
    assert adapter.rejections == {"missing_field": 1}


async def test_setpoint_without_ack_times_out_and_refusals_carry_a_reason(
    broker: BrokerInfo,
) -> None:
    park = make_park(broker.port, broker.protocol, ack_timeout_s=1.0)
    adapter = single_adapter(park)
    fleet = Fleet(park, SystemClock())
    (silent, gateway) = emulators(park, broker)
    silent.answer = False
    gateway.refuse = lambda command: "local_override" if command.device_id == "dg1" else None
    async with running(adapter.run(fleet), silent.run(), gateway.run()):
        await eventually(lambda: adapter.health().state.value == "connected")
        await silent.connected.wait()
        await gateway.connected.wait()
        timed_out = await adapter.send(setpoint("bat-a", 100.0))
        refused = await adapter.send(setpoint("gen-a", -200.0))
        expired = await adapter.send(setpoint("bat-b", 50.0, valid_s=-1.0))
        unknown = await adapter.send(setpoint("nobody", 50.0))
    assert (timed_out.accepted, timed_out.reason) == (False, "timeout")
    assert silent.stats.setpoints == 1  # it did arrive; no answer came
    assert (refused.accepted, refused.reason) == (False, "local_override")
    assert (expired.accepted, expired.reason) == (False, "expired")
    assert (unknown.accepted, unknown.reason) == (False, "unknown_asset")


async def test_send_while_disconnected_is_refused_at_once() -> None:
    park = make_park(1, "5")
    adapter = single_adapter(park)
    ack = await adapter.send(setpoint("bat-a", 10.0))
    assert (ack.accepted, ack.reason) == (False, "disconnected")


async def test_bad_payloads_are_counted_by_reason_and_do_not_stop_ingest(
    broker: BrokerInfo,
) -> None:
    park = make_park(broker.port, broker.protocol)
    metrics = Metrics()
    fleet = Fleet(park, SystemClock(), metrics=metrics)
    adapter = single_adapter(park)
    now = datetime.now(UTC).timestamp()
    bad = [
        ("vpp/ent-a/bat-a/telemetry", b"{not json"),
        ("vpp/ent-a/bat-a/telemetry", b'{"ts": %f, "power_kw": "12"}' % now),
        ("vpp/ent-a/bat-a/telemetry", b'{"ts": %f}' % now),
        ("vpp/ent-a/bat-a/telemetry", b'{"ts": 1.5, "power_kw": 1}'),
        ("vpp/ent-a/bat-a/telemetry", b'{"ts": %f, "power_kw": NaN}' % now),
        ("vpp/ent-a/gw-a/batch", b'{"readings": {"id": "dg1"}}'),
        ("vpp/ent-a/gw-a/batch", b'{"ts": %f, "readings": [{"id": "dg1"}, 5]}' % now),
        ("vpp/ent-a/nobody/telemetry", b'{"ts": %f, "power_kw": 1.0}' % now),  # fleet: unknown
        ("vpp/ent-a/bat-a/telemetry", b'{"ts": %f, "power_kw": 1e9}' % (now - 3600)),  # stale
        ("vpp/ent-a/bat-a/status", b'{"state": "sleeping"}'),
    ]
    good = b'{"ts": %f, "power_kw": 42.0, "soc": 0.61}' % now
    async with running(adapter.run(fleet)):
        await eventually(lambda: adapter.health().state.value == "connected")
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for name, body in bad:
                await client.publish(name, body, qos=1)
            await client.publish("vpp/ent-a/bat-a/telemetry", good, qos=1)
        await eventually(lambda: fleet.latest("bat-a") is not None)
    latest = fleet.latest("bat-a")
    assert latest is not None and (latest.power_kw, latest.soc_fraction) == (42.0, 0.61)

    def rejected(reason: str) -> float:
        labels = {"adapter": "mqtt", "reason": reason}
        return metrics.registry.get_sample_value("vpp_telemetry_rejected_total", labels) or 0.0

    assert rejected("malformed_json") == 2  # broken text and NaN
    assert rejected("wrong_type") == 3  # string power, readings not a list, reading 5
    assert rejected("missing_field") == 2  # no power_kw (device), no power_kw (dg1)
    assert rejected("bad_timestamp") == 1
    assert rejected("bad_value") == 1
    assert rejected("stale_timestamp") == 1
    unknown = metrics.registry.get_sample_value(
        "vpp_telemetry_rejected_total", {"adapter": "mqtt", "reason": "unknown_asset"}
    )
    assert unknown == 1.0
    assert adapter.health().reconnects == 0


async def test_large_and_many_messages_arrive_whole_and_are_acknowledged(
    broker: BrokerInfo,
) -> None:
    """A batch larger than one socket read, and a burst of small QoS 0 and 1 messages.

    The broker sends a client only a few unacknowledged QoS 1 messages at a time, so the
    burst arrives only if the engine acknowledges what it reads.
    """
    devices = 3000
    park = gateway_park(broker.port, broker.protocol, devices)
    fleet = Fleet(park, SystemClock())
    adapter = single_adapter(park)
    now = datetime.now(UTC).timestamp()
    readings = [{"id": f"d{i}", "power_kw": float(i % 50), "soc": 0.5} for i in range(devices)]
    big = json.dumps({"v": 1, "ts": now, "readings": readings}).encode()
    assert len(big) > 65536 * 2  # several reads, and a 3-byte remaining length
    burst = 400
    async with running(adapter.run(fleet)):
        await eventually(lambda: adapter.health().state.value == "connected")
        async with aiomqtt.Client(broker.host, broker.port, socket_options=NO_DELAY) as client:
            await client.publish("vpp/ent-a/gw-a/batch", big, qos=1)
            for k in range(burst):
                body = b'{"ts": %f, "power_kw": %d}' % (now + 0.001 * (k + 1), k % 50)
                await client.publish("vpp/ent-a/d7/telemetry", body, qos=k % 2)
        await eventually(lambda: fleet.accepted == devices + burst, timeout_s=15.0)
    assert fleet.rejected == 0 and not adapter.rejections
    latest = fleet.latest("d7")
    assert latest is not None and latest.power_kw == float((burst - 1) % 50)


def gateway_park(port: int, protocol: str, devices: int) -> Park:
    """One enterprise with `devices` batteries behind gw-a; d7 is also its own endpoint."""
    connection = {"adapter": "mqtt", "port": port, "protocol": protocol}
    assets: list[dict[str, Any]] = [
        {
            "id": f"d{i}",
            "kind": "battery",
            "power_kw": 100,
            "capacity_kwh": 200,
            "connection": connection if i == 7 else {"gateway": "gw-a"},
        }
        for i in range(devices)
    ]
    return Park.model_validate(
        {
            "id": "p",
            "name": "MQTT volume park",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 4e5,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {
                    "id": "ent-a",
                    "name": "A",
                    "connection_limit_kw": 4e5,
                    "gateways": [{"id": "gw-a", "connection": connection}],
                    "assets": assets,
                }
            ],
        }
    )


async def test_retained_status_and_last_will_set_availability(broker: BrokerInfo) -> None:
    park = make_park(broker.port, broker.protocol)
    fleet = Fleet(park, SystemClock())
    adapter = single_adapter(park)
    # the gateway said it was online before the engine started: the retained message tells
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("vpp/ent-a/gw-a/status", payloads.encode_status(True), 1, retain=True)
        await client.publish("vpp/ent-a/bat-a/status", b"offline", 1, retain=True)
    now = datetime.now(UTC).timestamp()
    async with running(adapter.run(fleet)):
        await eventually(lambda: fleet.availability("bat-a") is Availability.OFFLINE)
        async with aiomqtt.Client(broker.host, broker.port) as client:
            body = b'{"ts": %f, "readings": [{"id": "dg1", "power_kw": -120}]}' % now
            await client.publish("vpp/ent-a/gw-a/batch", body, qos=1)
        await eventually(lambda: fleet.availability("gen-a") is Availability.AVAILABLE)
        # the gateway dies without a word: the broker publishes its will
        await crash_with_will(broker, "vpp/ent-a/gw-a/status", b'{"state": "offline"}')
        await eventually(lambda: fleet.availability("gen-a") is Availability.OFFLINE)
        assert fleet.availability("bat-b") is Availability.OFFLINE
        assert fleet.availability("bat-a") is Availability.OFFLINE  # still, from its status


def _utf8(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


async def crash_with_will(broker: BrokerInfo, will_topic: str, will_payload: bytes) -> None:
    """Connect (MQTT 3.1.1) with a retained QoS 1 will, then drop the TCP link: a crash."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    variable = _utf8("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
    body = variable + _utf8("crashing-gateway") + _utf8(will_topic) + _utf8(will_payload)
    assert len(body) < 128  # one-byte remaining length
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(bytes([0x10, len(body)]) + body)
    await writer.drain()
    assert await reader.readexactly(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    writer.transport.abort()  # no DISCONNECT: the broker must publish the will


# --- Mosquitto only: TLS and passwords, shared subscriptions, a broker restart ----------------
# (defined only where the binary exists; the embedded broker speaks neither MQTT 5 nor
# persistence)

if mosquitto_available():

    async def test_tls_with_password_connects_and_a_wrong_password_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        tls = make_tls(tmp_path / "tls")
        with MosquittoProcess(tmp_path / "m", tls=tls, users={"engine": "s3cret"}) as mosquitto:
            secure = {"tls": True, "ca_file": str(tls.ca_file), "username": "engine"}
            park = make_park(mosquitto.port, "5", password_env="VPP_TEST_MQTT_PASSWORD", **secure)
            monkeypatch.setenv("VPP_TEST_MQTT_PASSWORD", "wrong")
            refused = single_adapter(park)
            fleet = Fleet(park, SystemClock())
            async with running(refused.run(fleet)):
                await eventually(lambda: refused.health().last_error != "")
            assert "authori" in refused.health().last_error.lower()
            assert refused.health().state.value == "disconnected"

            monkeypatch.setenv("VPP_TEST_MQTT_PASSWORD", "s3cret")
            adapter = single_adapter(park)
            context = ssl.create_default_context(cafile=str(tls.ca_file))
            body = payloads.encode_telemetry(Measurement("bat-a", datetime.now(UTC), -75.0))
            async with running(adapter.run(fleet)):
                await eventually(lambda: adapter.health().state.value == "connected")
                async with aiomqtt.Client(
                    mosquitto.host,
                    mosquitto.port,
                    username="engine",
                    password="s3cret",
                    tls_context=context,
                ) as client:
                    await client.publish("vpp/ent-a/bat-a/telemetry", body, qos=1)
                await eventually(lambda: fleet.latest("bat-a") is not None)
            latest = fleet.latest("bat-a")
            assert latest is not None and latest.power_kw == -75.0

    async def test_shared_subscription_splits_one_stream_between_engines(
        mosquitto_broker: MosquittoProcess,
    ) -> None:
        park = make_park(mosquitto_broker.port, "5", shared_group="engines")
        fleets = [Fleet(park, SystemClock()), Fleet(park, SystemClock())]
        engines = [single_adapter(park), single_adapter(park)]
        start = datetime.now(UTC).timestamp()
        count = 200
        async with running(*(e.run(f) for e, f in zip(engines, fleets, strict=True))):
            await eventually(lambda: all(e.health().state.value == "connected" for e in engines))
            async with aiomqtt.Client(mosquitto_broker.host, mosquitto_broker.port) as client:
                for i in range(count):
                    body = b'{"ts": %f, "power_kw": %d}' % (start + i * 0.001, i)
                    await client.publish("vpp/ent-a/bat-a/telemetry", body, qos=1)
            await eventually(lambda: sum(f.accepted for f in fleets) == count)
        assert all(f.accepted > 0 for f in fleets)  # each engine got a share
        assert sum(f.rejected for f in fleets) == 0  # and nobody got a reading twice

    async def test_broker_restart_keeps_acked_state_and_the_session(tmp_path: Path) -> None:
        with MosquittoProcess(tmp_path / "m", persistence=True) as mosquitto:
            info = BrokerInfo("mosquitto", mosquitto.host, mosquitto.port, "5")
            # MQTT 3.1.1 persistent session: Mosquitto 2.0.11 was seen to drop MQTT 5 sessions
            # (session expiry > 0) on a restart from its persistence file (docs/mqtt.md)
            park = make_park(mosquitto.port, "3.1.1", client_id="engine-1", telemetry_qos=1)
            fleet = Fleet(park, SystemClock())
            adapter = single_adapter(park)
            adapter.backoff = Backoff(base_s=1.0, cap_s=1.0)  # reconnects 0.5-1 s after a loss
            device = emulators(park, info)[0]
            device.period_s = 3600.0  # telemetry only when the test publishes it

            async def device_forever() -> None:
                while True:
                    try:
                        await device.run()
                    except* aiomqtt.MqttError:
                        pass  # the broker went away: connect again
                    await asyncio.sleep(0.05)

            async with running(adapter.run(fleet), device_forever()):
                await eventually(lambda: adapter.health().state.value == "connected")
                await device.connected.wait()
                before = await adapter.send(setpoint("bat-a", -100.0))
                assert before.accepted

                await asyncio.to_thread(mosquitto.restart)
                # published while the engine is still away: the persistent session keeps it
                assert adapter.health().state.value != "connected"
                now = datetime.now(UTC).timestamp()
                async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                    body = b'{"ts": %f, "readings": [{"id": "bat-b", "power_kw": -99.5}]}' % now
                    await client.publish("vpp/ent-a/gw-a/batch", body, qos=1)
                await eventually(lambda: adapter.health().state.value == "connected")
                await eventually(lambda: fleet.latest("bat-b") is not None)
                await device.connected.wait()
                after = await adapter.send(setpoint("bat-a", -50.0))
            latest = fleet.latest("bat-b")
            assert latest is not None and latest.power_kw == -99.5
            assert adapter.health().reconnects >= 1
            assert after.accepted and after.applied_power_kw == pytest.approx(-50.0)
            # the acks of both sides of the restart are kept
            assert adapter.acknowledged["bat-a"].correlation_id == after.correlation_id
            assert before.correlation_id != after.correlation_id
