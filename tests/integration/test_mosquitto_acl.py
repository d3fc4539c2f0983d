"""The deployment's Mosquitto config and ACL confine each enterprise gateway to its own topics.

A private Mosquitto runs `deploy/mosquitto/mosquitto.conf` and `deploy/mosquitto/acl` as
shipped (only the paths and the listener are moved to a temporary folder and a loopback port),
with a throwaway TLS certificate chain and a password file for the engine and two enterprises.
Real MQTT 5 clients over TLS then try what a gateway may and may not do.

A refused publish is silent for the subscriber, so absence is proven by ordering: the same
client publishes the refused message and then an allowed marker, and the broker delivers one
publisher's QoS 1 messages in order; the marker arriving first means the other never will.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from adapters.mqtt import mqtt_adapters
from adapters.mqtt_device import MqttDeviceEmulator, sim_models
from tests.brokers import (
    HOST,
    MOSQUITTO_PASSWD,
    MosquittoProcess,
    TlsFiles,
    make_tls,
    mosquitto_available,
)
from vpp.clock import SystemClock
from vpp.config.schema import Park
from vpp.domain import Setpoint
from vpp.fleet import Fleet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_MOSQUITTO = ROOT / "deploy" / "mosquitto"
ENGINE_USER = "_engine"
ACCOUNTS = {
    ENGINE_USER: "engine-pass-0f8c2d",
    "ent-a": "ent-a-pass-9b1e44",
    "ent-b": "ent-b-pass-27c5aa",
}
PASSWORD_ENV = "VPP_TEST_ACL_MQTT_PASSWORD"
WAIT_S = 5.0
NOT_AUTHORIZED = 0x87
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10  # accepted; nobody was listening


class DeployedMosquitto(MosquittoProcess):
    """Mosquitto running the deployment's own config file, moved to a temporary folder."""

    def __init__(self, directory: Path, tls: TlsFiles) -> None:
        super().__init__(directory, tls=tls, users=dict(ACCOUNTS))

    def _write_config(self) -> Path:
        config_dir = self.directory / "config"
        (config_dir / "certs").mkdir(parents=True, exist_ok=True)
        assert self.tls is not None
        for source, name in (
            (self.tls.ca_file, "ca.crt"),
            (self.tls.cert_file, "server.crt"),
            (self.tls.key_file, "server.key"),
        ):
            (config_dir / "certs" / name).write_bytes(source.read_bytes())
        (config_dir / "acl").write_text((DEPLOY_MOSQUITTO / "acl").read_text())
        password_file = config_dir / "passwd"
        password_file.write_text("")
        for user, password in self.users.items():
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(password_file), user, password],
                check=True,
                capture_output=True,
            )
        data_dir = self.directory / "data"
        data_dir.mkdir(exist_ok=True)
        text = (DEPLOY_MOSQUITTO / "mosquitto.conf").read_text()
        assert "listener 8883\n" in text
        text = text.replace("listener 8883\n", f"listener {self.port} {HOST}\n")
        text = text.replace("/mosquitto/config/", f"{config_dir}/")
        text = text.replace("/mosquitto/data/", f"{data_dir}/")
        if os.geteuid() == 0:  # as root Mosquitto would switch to its own user and lose our files
            text += f"user {getpass.getuser()}\n"
        config = self.directory / "mosquitto.conf"
        config.write_text(text)
        return config


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedMosquitto]:
    directory = tmp_path_factory.mktemp("acl")
    tls = make_tls(directory / "tls")
    with DeployedMosquitto(directory / "broker", tls) as broker:
        yield broker


def tls_context(broker: MosquittoProcess) -> ssl.SSLContext:
    assert broker.tls is not None
    return ssl.create_default_context(cafile=str(broker.tls.ca_file))


def client(
    broker: MosquittoProcess, user: str | None, password: str | None = None
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"{user}-{uuid.uuid4().hex[:8]}",
        username=user,
        password=password if password is not None else ACCOUNTS.get(user or ""),
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls_context(broker),
        timeout=WAIT_S,
    )


@asynccontextmanager
async def listening(
    broker: MosquittoProcess, user: str, *filters: str
) -> AsyncIterator[tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message], list[int]]]:
    """A client subscribed to `filters`; yields it, its received messages and the SUBACK codes."""
    received: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    async with client(broker, user) as subscriber:
        codes: list[int] = []
        for topic_filter in filters:
            granted = await subscriber.subscribe(topic_filter, qos=1)
            codes.extend(_code(g) for g in granted)

        async def collect() -> None:
            async for message in subscriber.messages:
                received.put_nowait(message)

        collector = asyncio.create_task(collect(), name=f"collect-{user}")
        try:
            yield subscriber, received, codes
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector


def _code(granted: Any) -> int:
    return granted.value if isinstance(granted, ReasonCode) else int(granted)


async def next_topic(received: asyncio.Queue[aiomqtt.Message]) -> str:
    async with asyncio.timeout(WAIT_S):
        message = await received.get()
    return message.topic.value


async def topics(received: asyncio.Queue[aiomqtt.Message], count: int) -> list[str]:
    return [await next_topic(received) for _ in range(count)]


def publish_reason(broker: MosquittoProcess, user: str, topic: str) -> int:
    """Publish at QoS 1 with paho and return the PUBACK reason code (MQTT 5)."""
    done = threading.Event()
    reasons: list[int] = []
    connected = threading.Event()

    def on_connect(*_args: Any) -> None:
        connected.set()

    def on_publish(
        _client: paho.Client, _userdata: Any, _mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        reasons.append(reason.value)
        done.set()

    mqtt = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    mqtt.username_pw_set(user, ACCOUNTS[user])
    mqtt.tls_set_context(tls_context(broker))
    mqtt.on_connect = on_connect
    mqtt.on_publish = on_publish
    mqtt.connect(broker.host, broker.port)
    mqtt.loop_start()
    try:
        assert connected.wait(WAIT_S)
        mqtt.publish(topic, b'{"ts": 1772439330, "power_kw": 1}', qos=1)
        assert done.wait(WAIT_S)
    finally:
        mqtt.disconnect()
        mqtt.loop_stop()
    return reasons[0]


TELEMETRY = b'{"ts": 1772439330, "power_kw": -10.5}'


if mosquitto_available():

    async def test_the_engine_reads_every_enterprise_and_gateways_write_their_own(
        deployed: DeployedMosquitto,
    ) -> None:
        filters = ("vpp/+/+/telemetry", "vpp/+/+/batch", "vpp/+/+/status", "vpp/+/+/ack")
        async with listening(deployed, ENGINE_USER, *filters) as (_, received, codes):
            assert codes == [1, 1, 1, 1]
            async with (
                client(deployed, "ent-a") as gateway_a,
                client(deployed, "ent-b") as gateway_b,
            ):
                for leaf in ("telemetry", "batch", "status", "ack"):
                    await gateway_a.publish(f"vpp/ent-a/gw-a/{leaf}", TELEMETRY, qos=1)
                await gateway_b.publish("vpp/ent-b/gw-b/telemetry", TELEMETRY, qos=1)
                got = set(await topics(received, 5))
        assert got == {
            "vpp/ent-a/gw-a/telemetry",
            "vpp/ent-a/gw-a/batch",
            "vpp/ent-a/gw-a/status",
            "vpp/ent-a/gw-a/ack",
            "vpp/ent-b/gw-b/telemetry",
        }

    async def test_a_gateway_receives_its_own_setpoints_but_not_another_enterprises(
        deployed: DeployedMosquitto,
    ) -> None:
        async with (
            listening(deployed, "ent-a", "vpp/ent-a/+/set") as (_, for_a, codes_a),
            listening(deployed, "ent-b", "vpp/ent-b/+/set") as (_, for_b, codes_b),
            client(deployed, ENGINE_USER) as engine,
        ):
            assert codes_a == codes_b == [1]
            await engine.publish("vpp/ent-b/gw-b/set", b"{}", qos=1)
            await engine.publish("vpp/ent-a/gw-a/set", b"{}", qos=1)
            assert await next_topic(for_a) == "vpp/ent-a/gw-a/set"
            assert await next_topic(for_b) == "vpp/ent-b/gw-b/set"
            assert for_a.empty()

    async def test_a_gateway_subscribed_to_another_enterprise_receives_nothing(
        deployed: DeployedMosquitto,
    ) -> None:
        # Mosquitto grants these subscriptions and then checks every message against the
        # subscriber's read access: nothing of B's ever reaches A.
        foreign = ("vpp/ent-b/gw-b/set", "vpp/ent-b/gw-b/telemetry", "vpp/ent-b/#", "vpp/#")
        async with (
            listening(deployed, "ent-a", *foreign, "vpp/ent-a/gw-a/set") as (_, for_a, _codes),
            listening(deployed, ENGINE_USER, "vpp/ent-b/gw-b/telemetry") as (
                engine,
                for_engine,
                _,
            ),
            client(deployed, "ent-b") as gateway_b,
        ):
            await gateway_b.publish("vpp/ent-b/gw-b/telemetry", TELEMETRY, qos=1)
            # once the engine has B's reading, the broker has routed it to every subscriber
            assert await next_topic(for_engine) == "vpp/ent-b/gw-b/telemetry"
            await engine.publish("vpp/ent-b/gw-b/set", b"{}", qos=1)
            await engine.publish("vpp/ent-a/gw-a/set", b"{}", qos=1)  # the marker
            assert await next_topic(for_a) == "vpp/ent-a/gw-a/set"
            assert for_a.empty()

    @pytest.mark.parametrize(
        "forbidden",
        [
            "vpp/ent-b/gw-b/telemetry",  # another enterprise's telemetry
            "vpp/ent-b/gw-b/status",  # or its status
            "vpp/ent-b/gw-b/ack",  # or a forged ack
            "vpp/ent-a/gw-a2/set",  # a setpoint, even to a device of its own enterprise
            "vpp/_engine/engine-1/status",  # the engine's status
            "vpp/ent-a/gw-a/other",  # a leaf outside the tree
        ],
    )
    async def test_a_gateway_cannot_publish_outside_its_own_topics(
        deployed: DeployedMosquitto, forbidden: str
    ) -> None:
        async with (
            listening(deployed, ENGINE_USER, "vpp/#") as (_, received, _codes),
            client(deployed, "ent-a") as gateway_a,
        ):
            await gateway_a.publish(forbidden, TELEMETRY, qos=1)
            await gateway_a.publish("vpp/ent-a/gw-a/telemetry", TELEMETRY, qos=1)  # the marker
            assert await next_topic(received) == "vpp/ent-a/gw-a/telemetry"
        reason = await asyncio.to_thread(publish_reason, deployed, "ent-a", forbidden)
        assert reason == NOT_AUTHORIZED
        allowed = await asyncio.to_thread(
            publish_reason, deployed, "ent-a", "vpp/ent-a/gw-a/telemetry"
        )
        assert allowed in (SUCCESS, NO_MATCHING_SUBSCRIBERS)

    async def test_gateways_may_watch_the_engine_status_only(
        deployed: DeployedMosquitto,
    ) -> None:
        async with (
            listening(deployed, "ent-a", "vpp/_engine/#") as (_, for_a, _codes),
            client(deployed, ENGINE_USER) as engine,
        ):
            await engine.publish("vpp/_engine/engine-1/other", b"{}", qos=1)
            await engine.publish("vpp/_engine/engine-1/status", b'{"state": "online"}', qos=1)
            assert await next_topic(for_a) == "vpp/_engine/engine-1/status"
            assert for_a.empty()

    async def test_anonymous_wrong_password_and_plain_tcp_are_refused(
        deployed: DeployedMosquitto,
    ) -> None:
        with pytest.raises(aiomqtt.MqttError):
            async with client(deployed, None):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with client(deployed, "ent-a", password="not-the-password"):
                pass
        # an enterprise's password does not open another enterprise's account
        with pytest.raises(aiomqtt.MqttError):
            async with client(deployed, "ent-b", password=ACCOUNTS["ent-a"]):
                pass
        plain = aiomqtt.Client(
            deployed.host,
            deployed.port,
            username="ent-a",
            password=ACCOUNTS["ent-a"],
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=2.0,
        )
        with pytest.raises(aiomqtt.MqttError):
            async with plain:
                pass

    async def test_the_engine_adapter_and_a_gateway_work_under_the_acl(
        deployed: DeployedMosquitto, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The real adapter (shared subscription, status, setpoints, acks) and gateway emulator."""
        assert deployed.tls is not None
        monkeypatch.setenv(PASSWORD_ENV, ACCOUNTS[ENGINE_USER])
        park = two_enterprise_park(deployed.port, str(deployed.tls.ca_file))
        (adapter,) = mqtt_adapters(park, SystemClock())
        fleet = Fleet(park, SystemClock())
        gateway_a = MqttDeviceEmulator(
            host=deployed.host,
            port=deployed.port,
            enterprise_id="ent-a",
            endpoint_id="gw-a",
            devices=sim_models(park, {"bat-a": "bat-a"}),
            batched=True,
            period_s=0.1,
            username="ent-a",
            password=ACCOUNTS["ent-a"],
            tls_context=tls_context(deployed),
        )
        # gateway B logs in with its own account but claims to be A's gateway: the broker
        # drops everything it publishes, so A's asset is only ever fed by A
        impostor = MqttDeviceEmulator(
            host=deployed.host,
            port=deployed.port,
            enterprise_id="ent-a",
            endpoint_id="gw-a",
            devices=sim_models(park, {"bat-b": "bat-a"}),
            batched=True,
            period_s=0.1,
            username="ent-b",
            password=ACCOUNTS["ent-b"],
            tls_context=tls_context(deployed),
            client_id="impostor",
        )
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(adapter.run(fleet)),
                group.create_task(gateway_a.run()),
                group.create_task(impostor.run()),
            ]
            try:
                await eventually(lambda: adapter.health().state.value == "connected")
                await gateway_a.connected.wait()
                await impostor.connected.wait()
                await eventually(lambda: fleet.accepted >= 5)
                now = datetime.now(UTC)
                ack = await adapter.send(
                    Setpoint("bat-a", -100.0, now, now + timedelta(seconds=30), uuid.uuid4().hex)
                )
            finally:
                for task in tasks:
                    task.cancel()
        assert ack.accepted and ack.applied_power_kw == pytest.approx(-100.0)
        assert impostor.stats.setpoints == 0  # A's setpoints never reached it
        assert impostor.stats.published > 0  # it did try
        # one reading per batch: the fleet saw no more readings than gateway A published
        assert 0 < fleet.accepted + fleet.rejected <= gateway_a.stats.published
        assert adapter.rejections.total() == 0


async def eventually(check: Any, timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110  (polls state other tasks own)
            await asyncio.sleep(0.02)


def two_enterprise_park(port: int, ca_file: str) -> Park:
    connection = {
        "adapter": "mqtt",
        "port": port,
        "protocol": "5",
        "tls": True,
        "ca_file": ca_file,
        "username": ENGINE_USER,
        "password_env": PASSWORD_ENV,
        "shared_group": "engines",
    }
    return Park.model_validate(
        {
            "id": "p",
            "name": "ACL test park",
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
                            "connection": {"gateway": "gw-a"},
                        }
                    ],
                },
                {
                    "id": "ent-b",
                    "name": "B",
                    "connection_limit_kw": 3000,
                    "gateways": [{"id": "gw-b", "connection": connection}],
                    "assets": [
                        {
                            "id": "bat-b",
                            "kind": "battery",
                            "power_kw": 50,
                            "capacity_kwh": 100,
                            "connection": {"gateway": "gw-b"},
                        }
                    ],
                },
            ],
        }
    )
