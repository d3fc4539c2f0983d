"""A device or enterprise gateway speaking the engine's MQTT protocol over simulated assets.

Used by tests, demos and benchmarks as the far end of `adapters.mqtt`: it publishes a retained
`online` status with an `offline` last will, telemetry per device (`.../telemetry`) or one batch
per gateway (`.../batch`) every period from its `phase_s` on, and answers setpoints on `.../set` with acks (to the MQTT 5 response
topic, else the payload's `reply_to`, else `.../ack`). With `set_batch` (the default) its status
says it takes batched setpoints, and it answers a batch with one batched ack. Acks are
published without waiting for the broker's PUBACK of the previous one. The physics is any
object with the `step / apply / measure` interface of `adapters.sim` models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters import payloads
from adapters.mqtt import (
    ACK,
    BATCH,
    MAX_INFLIGHT,
    NO_DELAY,
    QOS_CONTROL,
    SET,
    STATUS,
    TELEMETRY,
    checked,
    publish_nowait,
    topic,
)
from adapters.sim import SimModel, SimOptions, Site, make_model
from vpp.clock import Clock, SystemClock
from vpp.config.schema import Park
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import PayloadError

log = logging.getLogger(__name__)


class DeviceModel(Protocol):
    """What the emulator needs of a simulated asset (adapters.sim models provide it)."""

    @property
    def asset_id(self) -> str: ...

    def step(self, now: datetime, dt_s: float) -> None: ...

    def apply(self, setpoint: Setpoint) -> float: ...

    def measure(self, now: datetime) -> Measurement: ...


Refusal = Callable[[payloads.SetpointMessage], str | None]


@dataclass(slots=True)
class EmulatorStats:
    published: int = 0
    setpoints: int = 0
    acked: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


class MqttDeviceEmulator:
    """One MQTT endpoint (a device, or a gateway relaying for several) over simulated models.

    `devices` maps the ids used in payloads to models. `batched` publishes one `.../batch`
    message per period (a gateway); otherwise each device publishes `.../telemetry` on its own
    endpoint topic. `refuse` may return a reason to refuse a setpoint; `answer=False` makes the
    device swallow setpoints without acking (to test timeouts); `set_batch=False` makes it a
    device that knows only the single setpoint form (it does not announce the batched one).
    `phase_s` delays the first telemetry message: the gateways of a site do not all report
    at the same instant, and many emulators started together should not either.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        enterprise_id: str,
        endpoint_id: str,
        devices: Mapping[str, DeviceModel],
        prefix: str = "vpp",
        batched: bool = False,
        period_s: float = 1.0,
        clock: Clock | None = None,
        protocol: str = "5",
        telemetry_qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        refuse: Refusal | None = None,
        answer: bool = True,
        client_id: str | None = None,
        set_batch: bool = True,
        phase_s: float = 0.0,
    ) -> None:
        if not phase_s >= 0.0:
            raise ValueError(
                f"MqttDeviceEmulator {endpoint_id}: phase_s must be >= 0, not {phase_s}"
            )
        self.host = host
        self.port = port
        self.prefix = prefix
        self.enterprise_id = enterprise_id
        self.endpoint_id = endpoint_id
        self.devices = dict(devices)
        self.batched = batched
        self.period_s = period_s
        self.clock = clock if clock is not None else SystemClock()
        self.protocol = protocol
        self.telemetry_qos = telemetry_qos
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.refuse = refuse
        self.answer = answer
        self.set_batch = set_batch
        self.phase_s = phase_s
        self._steppers = _steppers(self.devices.values())
        self.client_id = client_id or f"dev-{enterprise_id}-{endpoint_id}"
        self.stats = EmulatorStats()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._last_step: datetime | None = None

    def _topic(self, leaf: str, endpoint_id: str | None = None) -> str:
        return topic(self.prefix, self.enterprise_id, endpoint_id or self.endpoint_id, leaf)

    def _make_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            self._topic(STATUS), payloads.encode_status(False), qos=QOS_CONTROL, retain=True
        )
        version = (
            aiomqtt.ProtocolVersion.V5 if self.protocol == "5" else aiomqtt.ProtocolVersion.V311
        )
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
            protocol=version,
            will=will,
            tls_context=self.tls_context,
            keepalive=10,
            timeout=10,
            max_inflight_messages=MAX_INFLIGHT,
            socket_options=NO_DELAY,
        )

    async def run(self) -> None:
        """Connect, announce, publish telemetry every period and answer setpoints until cancelled."""
        async with self._make_client() as client:
            self._client = client
            await client.subscribe(self._topic(SET), QOS_CONTROL)
            if not self.batched:  # each device is its own endpoint
                for device_id in self.devices:
                    if device_id != self.endpoint_id:
                        await client.subscribe(self._topic(SET, device_id), QOS_CONTROL)
            await self._announce(client, online=True)
            self.connected.set()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._telemetry_loop(client), name="emulator-telemetry")
                    group.create_task(self._setpoint_loop(client), name="emulator-setpoints")
            finally:
                self.connected.clear()
                self._client = None
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._announce(client, online=False)

    async def _announce(self, client: aiomqtt.Client, *, online: bool) -> None:
        status = payloads.encode_status(online, self.clock.now(), set_batch=self.set_batch)
        await checked(client.publish(self._topic(STATUS), status, qos=QOS_CONTROL, retain=True))
        if not self.batched:
            for device_id in self.devices:
                if device_id != self.endpoint_id:
                    await client.publish(
                        self._topic(STATUS, device_id), status, qos=QOS_CONTROL, retain=True
                    )

    def step(self) -> list[tuple[str, Measurement]]:
        """Advance every model to now and read it."""
        now = self.clock.now()
        dt_s = 0.0 if self._last_step is None else (now - self._last_step).total_seconds()
        self._last_step = now
        for step_all, models in self._steppers:
            step_all(models, now, dt_s)
        return [(device_id, model.measure(now)) for device_id, model in self.devices.items()]

    async def publish_once(self) -> int:
        """Publish one period's telemetry now; returns the number of messages."""
        client = self._client
        if client is None:
            return 0
        readings = self.step()
        if self.batched:
            body = payloads.encode_batch(readings, at=self._last_step)
            await checked(client.publish(self._topic(BATCH), body, qos=self.telemetry_qos))
            self.stats.published += 1
            return 1
        for device_id, measurement in readings:
            body = payloads.encode_telemetry(measurement)
            await checked(
                client.publish(self._topic(TELEMETRY, device_id), body, qos=self.telemetry_qos)
            )
        self.stats.published += len(readings)
        return len(readings)

    async def _telemetry_loop(self, client: aiomqtt.Client) -> None:
        if self.phase_s > 0:
            await self.clock.sleep(self.phase_s)
        while True:
            await self.publish_once()
            await self.clock.sleep(self.period_s)

    async def _setpoint_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                self._on_setpoints(client, message)
            except PayloadError as err:
                self.stats.errors.append(str(err))
                log.warning("emulator %s: bad setpoint: %s", self.endpoint_id, err)

    def _on_setpoints(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Apply one `.../set` message (one setpoint or a batch) and publish its ack(s)."""
        raw = message.payload
        if not isinstance(raw, bytes | bytearray):
            raise PayloadError(payloads.WRONG_TYPE, "setpoint payload is not bytes")
        batch = payloads.decode_setpoints(raw)
        if not self.set_batch and batch.batched:
            raise PayloadError(payloads.BAD_VALUE, "this device takes one setpoint per message")
        for reason, detail in batch.errors:
            self.stats.errors.append(f"{reason}: {detail}")
        self.stats.setpoints += len(batch.commands)
        if not self.answer or not batch.commands:
            return
        now = self.clock.now()
        acks = [(self._apply(command, now), command.device_id) for command in batch.commands]
        reply_to, properties = self._reply(message, batch.commands[0])
        body = payloads.encode_acks(acks) if batch.batched else payloads.encode_ack(*acks[0])
        if not publish_nowait(client, reply_to, body, QOS_CONTROL, properties):
            self.stats.errors.append(f"could not publish {len(acks)} ack(s) to {reply_to}")

    def _apply(self, command: payloads.SetpointMessage, now: datetime) -> SetpointAck:
        model = self.devices.get(command.device_id)
        reason = None
        if model is None:
            reason = "unknown_device"
        elif now >= command.valid_until:
            reason = "expired"
        elif self.refuse is not None:
            reason = self.refuse(command)
        applied: float | None = None
        if model is not None and reason is None:
            applied = model.apply(
                Setpoint(
                    asset_id=model.asset_id,
                    power_kw=command.power_kw,
                    issued_at=command.issued_at,
                    valid_until=command.valid_until,
                    correlation_id=command.correlation_id,
                )
            )
        ack = SetpointAck(
            correlation_id=command.correlation_id,
            asset_id=model.asset_id if model is not None else command.device_id,
            accepted=reason is None,
            at=now,
            applied_power_kw=applied,
            reason=reason or "",
        )
        if ack.accepted:
            self.stats.acked += 1
        else:
            self.stats.refused += 1
        return ack

    def _reply(
        self, message: aiomqtt.Message, command: payloads.SetpointMessage
    ) -> tuple[str, Properties | None]:
        incoming: Any = message.properties
        response_topic = getattr(incoming, "ResponseTopic", None)
        if isinstance(response_topic, str) and response_topic:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            correlation = getattr(incoming, "CorrelationData", None)
            if correlation is not None:
                properties.CorrelationData = correlation
            return response_topic, properties
        if command.reply_to:
            return command.reply_to, None
        endpoint = str(message.topic.value).split("/")[-2]
        return self._topic(ACK, endpoint), None


Stepper = Callable[[Sequence[Any], datetime, float], None]


def _steppers(models: Iterable[DeviceModel]) -> list[tuple[Stepper, list[DeviceModel]]]:
    """How to step `models`: simulator models in one `step_all` per class and site (which
    computes what they share, such as the sun, once), any other model on its own."""
    groups: dict[tuple[type, int], list[DeviceModel]] = {}
    steppers: list[tuple[Stepper, list[DeviceModel]]] = []
    for model in models:
        if isinstance(model, SimModel):
            key = (type(model), id(model.site))
            if key not in groups:
                groups[key] = []
                steppers.append((type(model).step_all, groups[key]))
            groups[key].append(model)
        else:
            steppers.append((_step_one, [model]))
    return steppers


def _step_one(models: Sequence[DeviceModel], now: datetime, dt_s: float) -> None:
    for model in models:
        model.step(now, dt_s)


def sim_models(park: Park, asset_ids: Mapping[str, str], seed: int = 0) -> dict[str, DeviceModel]:
    """Simulator models for some of a park's assets, keyed by device id (asset id -> device id)."""
    site = Site.of(park)
    models: dict[str, DeviceModel] = {}
    for _, asset in park.iter_assets():
        device_id = asset_ids.get(asset.id)
        if device_id is not None:
            models[device_id] = make_model(asset, site, SimOptions(seed=seed))
    return models
