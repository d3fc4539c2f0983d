"""MQTT adapter (aiomqtt, MQTT 5 or 3.1.1): telemetry in, setpoints out, availability.

Topic tree under `topic_prefix` (docs/mqtt.md has the payloads):

    <prefix>/<enterprise>/<endpoint>/telemetry   one device's reading          QoS telemetry_qos
    <prefix>/<enterprise>/<endpoint>/batch       a gateway's readings          QoS telemetry_qos
    <prefix>/<enterprise>/<endpoint>/status      online/offline, retained+will QoS 1
    <prefix>/<enterprise>/<endpoint>/set         setpoint, engine -> device    QoS 1
    <prefix>/<enterprise>/<endpoint>/ack         ack, device -> engine         QoS 1
    <prefix>/_engine/<client id>/status          the engine's own availability, retained+will

`<endpoint>` is the device's asset id, or the gateway id for assets behind a gateway (their
payloads then name the gateway's device id). With `shared_group` set, telemetry and batch
are subscribed as `$share/<group>/...` so several engine processes split the stream; status
and acks are subscribed by every process (status is retained, acks carry correlation ids).

Ingest does not queue: each PUBLISH is decoded in the socket's read callback and readings of
one event-loop turn go to the sink in one `accept`. A slow engine therefore reads its socket
slower and the broker queues for it: backpressure without an unbounded in-process queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters import payloads
from adapters._retry import Backoff
from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from vpp.clock import Clock, SystemClock
from vpp.config.schema import GatewayRef, MqttConnection, Park
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import AdapterError, PayloadError
from vpp.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

TELEMETRY = "telemetry"
BATCH = "batch"
STATUS = "status"
SET = "set"
ACK = "ack"
ENGINE_NODE = "_engine"  # not a valid enterprise id, so it cannot collide with one
QOS_CONTROL = 1  # setpoints, acks and status are never fire-and-forget
READ_BURST = 256  # PUBLISH packets read per socket wakeup (see _BurstReadClient)
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where an asset is reached: its enterprise, the endpoint in the topic, its payload id."""

    asset_id: str
    enterprise_id: str
    endpoint_id: str  # the asset itself, or the gateway that relays for it
    device_id: str  # the id the payloads use for it (the gateway's device id)


async def checked(call: Awaitable[T]) -> T:
    """Await an aiomqtt call and re-raise a cancellation it lost.

    aiomqtt waits for the broker's answer with `asyncio.wait_for`, which on Python 3.11 drops
    a cancellation that arrives in the same loop turn as the answer: the task would run on
    and hang in its next wait. A cancel count that grew during the call means exactly that.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await call
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def topic(prefix: str, enterprise_id: str, endpoint_id: str, leaf: str) -> str:
    return f"{prefix}/{enterprise_id}/{endpoint_id}/{leaf}"


def engine_status_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/{ENGINE_NODE}/{client_id}/{STATUS}"


class _BurstReadClient(aiomqtt.Client):
    """An aiomqtt client that reads up to READ_BURST packets per socket wakeup.

    Stock aiomqtt reads one packet per event-loop iteration; at tens of thousands of
    messages a second the loop iteration costs more than the packet. This overrides the one
    hook that registers the socket reader (same body as aiomqtt 2.x, plus the loop), and is
    used only with aiomqtt 2.x; `progress` counts delivered PUBLISH packets so the loop stops
    when a read brought nothing new.
    """

    def __init__(self, *args: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        progress = self._progress

        def callback() -> None:
            try:
                for _ in range(READ_BURST):
                    before = progress()
                    client.loop_read()
                    if hasattr(client._sock, "pending") and client._sock.pending() > 0:  # type: ignore[union-attr]
                        continue  # TLS: decoded bytes wait in the SSL object, not the socket
                    if progress() == before:
                        break
            except Exception as exc:  # the link broke: report it as aiomqtt does
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), callback)
        self._loop.call_soon_threadsafe(create_misc_task)


_BURST_READ = aiomqtt.__version_tuple__[0] == 2  # the overridden hook is aiomqtt 2.x's


def _inbox_type(handle: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[Any]]:
    """A 'queue' for aiomqtt that hands each message to `handle` at once instead of storing it.

    The client's message iterator then only serves to notice a disconnect.
    """

    class _Inbox(asyncio.Queue[Any]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            handle(item)

    return _Inbox


@dataclass(slots=True)
class _Pending:
    asset_id: str
    future: asyncio.Future[SetpointAck]


class MqttAdapter(Adapter):
    """The assets behind one MQTT broker (and topic prefix)."""

    def __init__(
        self,
        name: str,
        connection: MqttConnection,
        endpoints: Iterable[MqttEndpoint],
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        password: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.connection = connection
        self.clock = clock if clock is not None else SystemClock()
        self.metrics = metrics
        self.backoff = backoff if backoff is not None else Backoff(base_s=0.2, cap_s=30.0)
        self._password = password if password is not None else self._password_from_env()
        self._endpoints: dict[str, MqttEndpoint] = {}
        prefix = connection.topic_prefix
        # Topic strings map straight to assets: one dict lookup per message on the hot path.
        self._telemetry: dict[str, str] = {}
        self._batch: dict[str, dict[str, str]] = {}
        self._status: dict[str, list[str]] = {}
        self._ack_devices: dict[str, dict[str, str]] = {}
        for ep in endpoints:
            self._endpoints[ep.asset_id] = ep
            node = (ep.enterprise_id, ep.endpoint_id)
            if ep.endpoint_id == ep.asset_id:
                self._telemetry[topic(prefix, *node, TELEMETRY)] = ep.asset_id
            self._batch.setdefault(topic(prefix, *node, BATCH), {})[ep.device_id] = ep.asset_id
            self._status.setdefault(topic(prefix, *node, STATUS), []).append(ep.asset_id)
            self._ack_devices.setdefault(topic(prefix, *node, ACK), {})[ep.device_id] = ep.asset_id
        self.client_id = connection.client_id or f"vpp-{name}-{os.getpid()}-{id(self):x}"
        self._persistent = connection.client_id is not None and connection.session_expiry_s > 0
        self._sink: TelemetrySink | None = None
        self._client: aiomqtt.Client | None = None
        self._state = ConnectionState.DISCONNECTED
        self._reconnects = 0
        self._last_error = ""
        self._last_message_at: datetime | None = None
        self._pending: dict[str, _Pending] = {}
        self._buffer: list[Measurement] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connects = 0
        self.messages = 0  # PUBLISH packets handled
        self.rejections: Counter[str] = Counter()
        self.late_acks = 0
        self.acknowledged: dict[str, SetpointAck] = {}  # last ack per asset, kept across links

    # --- Adapter ---------------------------------------------------------------------------

    @property
    def asset_ids(self) -> frozenset[str]:
        return frozenset(self._endpoints)

    def health(self) -> AdapterHealth:
        return AdapterHealth(
            name=self.name,
            state=self._state,
            reconnects=self._reconnects,
            last_error=self._last_error,
            last_message_at=self._last_message_at,
        )

    async def run(self, sink: TelemetrySink) -> None:
        """Connect, subscribe and deliver until cancelled; reconnect with jittered backoff."""
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                await self._session()
            except AdapterError as err:
                self._last_error = str(err)
                log.warning("%s; reconnecting", err)
            finally:
                self._set_state(ConnectionState.DISCONNECTED)
                self._client = None
                self._flush()
            delay = self.backoff.next_delay()
            await asyncio.sleep(delay)

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        """Publish the setpoint (QoS 1) and wait up to `ack_timeout_s` for the device's ack."""
        endpoint = self._endpoints.get(setpoint.asset_id)
        if endpoint is None:
            return self._refused(setpoint, "unknown_asset")
        now = self.clock.now()
        if setpoint.expired(now):
            return self._refused(setpoint, "expired")
        client = self._client
        if client is None or self._state is not ConnectionState.CONNECTED:
            return self._refused(setpoint, "disconnected")
        prefix = self.connection.topic_prefix
        node = (endpoint.enterprise_id, endpoint.endpoint_id)
        ack_topic = topic(prefix, *node, ACK)
        properties = None
        if self.connection.protocol == "5":
            properties = _properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = ack_topic
            properties.CorrelationData = setpoint.correlation_id.encode()
            # The broker drops a setpoint that would reach the device after it expired.
            remaining_s = (setpoint.valid_until - now).total_seconds()
            properties.MessageExpiryInterval = max(1, math.ceil(remaining_s))
        body = payloads.encode_setpoint(setpoint, endpoint.device_id, reply_to=ack_topic)
        future: asyncio.Future[SetpointAck] = asyncio.get_running_loop().create_future()
        self._pending[setpoint.correlation_id] = _Pending(setpoint.asset_id, future)
        try:
            with self._translate("publish setpoint", timeouts=False):
                await self._answered(
                    client.publish(
                        topic(prefix, *node, SET),
                        body,
                        qos=QOS_CONTROL,
                        properties=properties,
                        timeout=math.inf,
                    ),
                    "publish setpoint",
                )
            async with asyncio.timeout(self.connection.ack_timeout_s):
                ack = await future
        except TimeoutError:
            return self._refused(setpoint, "timeout")
        except AdapterError:
            return self._refused(setpoint, "disconnected")
        finally:
            self._pending.pop(setpoint.correlation_id, None)
        # sent / acked / refused and the ack latency are counted by the control loop
        return ack

    # --- connection ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, doing: str, *, timeouts: bool = True) -> Iterator[None]:
        """The one place aiomqtt, paho and socket errors become AdapterError.

        With `timeouts=False` a TimeoutError passes through for the caller to report.
        """
        try:
            yield
        except aiomqtt.MqttError as err:
            raise AdapterError(self.name, f"{doing}: {err}") from err
        except TimeoutError as err:
            if not timeouts:
                raise
            message = str(err) or f"no answer within {self.connection.timeout_s:g} s"
            raise AdapterError(self.name, f"{doing}: {message}") from err
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            raise AdapterError(self.name, f"{doing}: {err}") from err

    async def _answered(self, call: Coroutine[Any, Any, T], doing: str) -> T:
        """Wait for the broker's answer to an aiomqtt call made with `timeout=math.inf`.

        The timeout counts from the last message received, not from the start: after a
        reconnect the broker sends a resumed session's backlog first, which can hold a SUBACK
        or PUBACK back for longer than `timeout_s` while the link is plainly alive.
        """
        task = asyncio.ensure_future(call)
        try:
            while True:
                seen = self.messages
                done, _ = await asyncio.wait({task}, timeout=self.connection.timeout_s)
                if done:
                    return task.result()
                if self.messages == seen:
                    raise TimeoutError(f"{doing}: no answer within {self.connection.timeout_s:g} s")
        finally:
            if not task.done():
                task.cancel()

    def _password_from_env(self) -> str | None:
        variable = self.connection.password_env
        if variable is None:
            return None
        value = os.environ.get(variable)
        if value is None:
            raise AdapterError(self.name, f"environment variable {variable} is not set")
        return value

    def _tls_context(self) -> ssl.SSLContext | None:
        c = self.connection
        if not c.tls:
            return None
        with self._translate("TLS setup"):
            context = ssl.create_default_context(cafile=c.ca_file)
            if c.cert_file is not None:
                context.load_cert_chain(c.cert_file, c.key_file)
        return context

    def _make_client(self, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        c = self.connection
        prefix = c.topic_prefix
        will = aiomqtt.Will(
            engine_status_topic(prefix, self.client_id),
            payloads.encode_status(False),
            qos=QOS_CONTROL,
            retain=True,
        )
        options: dict[str, Any] = {
            "identifier": self.client_id,
            "username": c.username,
            "password": self._password,
            "keepalive": c.keepalive_s,
            "timeout": c.timeout_s,
            "will": will,
            "tls_context": tls,
            "queue_type": _inbox_type(self._on_message),
        }
        if c.protocol == "5":
            options["protocol"] = aiomqtt.ProtocolVersion.V5
            if self._persistent:
                connect = _properties(PacketTypes.CONNECT)
                connect.SessionExpiryInterval = c.session_expiry_s
                options["properties"] = connect
                # Clean on the process's first connect (old telemetry is stale), resume after.
                options["clean_start"] = self._connects == 0
            else:
                options["clean_start"] = True
        else:
            options["protocol"] = aiomqtt.ProtocolVersion.V311
            options["clean_session"] = not self._persistent
        if _BURST_READ:
            return _BurstReadClient(c.host, c.port, progress=self._progress, **options)
        return aiomqtt.Client(c.host, c.port, **options)

    def _progress(self) -> int:
        return self.messages

    def subscriptions(self) -> list[tuple[str, int]]:
        c = self.connection
        prefix = c.topic_prefix
        shared = f"$share/{c.shared_group}/" if c.shared_group else ""
        return [
            (f"{shared}{prefix}/+/+/{TELEMETRY}", c.telemetry_qos),
            (f"{shared}{prefix}/+/+/{BATCH}", c.telemetry_qos),
            (f"{prefix}/+/+/{STATUS}", QOS_CONTROL),
            (f"{prefix}/+/+/{ACK}", QOS_CONTROL),
        ]

    async def _session(self) -> None:
        tls = await asyncio.to_thread(self._tls_context) if self.connection.tls else None
        client = self._make_client(tls)
        timeout_s = self.connection.timeout_s
        self._set_state(ConnectionState.CONNECTING)
        with self._translate(f"broker {self.connection.host}:{self.connection.port}"):
            async with asyncio.timeout(timeout_s):
                await client.__aenter__()
            try:
                if self._connects > 0:
                    self._reconnects += 1
                    if self.metrics is not None:
                        self.metrics.adapter_reconnects.labels(self.name).inc()
                self._connects += 1
                for subscription, qos in self.subscriptions():
                    await self._answered(
                        client.subscribe(subscription, qos, timeout=math.inf), "subscribe"
                    )
                await self._answered(
                    client.publish(
                        engine_status_topic(self.connection.topic_prefix, self.client_id),
                        payloads.encode_status(True, self.clock.now()),
                        qos=QOS_CONTROL,
                        retain=True,
                        timeout=math.inf,
                    ),
                    "publish status",
                )
                self._client = client
                self._set_state(ConnectionState.CONNECTED)
                self.backoff.reset()
                log.info("%s: connected to %s", self.name, self.connection.host)
                async for _ in client.messages:  # messages go to _on_message; this ends on a drop
                    pass
            finally:
                self._client = None
                await self._close(client)

    async def _close(self, client: aiomqtt.Client) -> None:
        """Say we are going (a clean disconnect suppresses the will), then disconnect."""
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            async with asyncio.timeout(self.connection.timeout_s):
                await client.publish(
                    engine_status_topic(self.connection.topic_prefix, self.client_id),
                    payloads.encode_status(False, self.clock.now()),
                    qos=QOS_CONTROL,
                    retain=True,
                )
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            async with asyncio.timeout(self.connection.timeout_s):
                await client.__aexit__(None, None, None)

    def _set_state(self, state: ConnectionState) -> None:
        self._state = state
        if self.metrics is not None:
            connected = 1 if state is ConnectionState.CONNECTED else 0
            self.metrics.adapter_connected.labels(self.name).set(connected)

    # --- incoming --------------------------------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        """Decode one PUBLISH; never raises (an exception here would drop the connection)."""
        self.messages += 1
        name = message.topic.value
        raw = message.payload
        try:
            if not isinstance(raw, bytes | bytearray):
                raise PayloadError(payloads.WRONG_TYPE, f"payload on {name} is not bytes")
            asset_id = self._telemetry.get(name)
            if asset_id is not None:
                self._deliver(payloads.decode_telemetry(raw, asset_id))
                return
            devices = self._batch.get(name)
            if devices is not None:
                self._on_batch(raw, devices)
                return
            self._on_other(name, raw)
        except PayloadError as err:
            self._reject(err.reason, f"{name}: {err}")
        except Exception:
            log.exception("%s: failed to handle a message on %s", self.name, name)
            self._reject(INTERNAL_ERROR, name)

    def _on_batch(self, raw: bytes | bytearray, devices: dict[str, str] | None) -> None:
        result = payloads.decode_batch(raw, devices)
        for reason, detail in result.errors:
            self._reject(reason, detail)
        if result.measurements:
            self._buffer.extend(result.measurements)
            self._schedule_flush()

    def _on_other(self, name: str, raw: bytes | bytearray) -> None:
        parts = name.split("/")
        depth = self.connection.topic_prefix.count("/") + 1
        if len(parts) != depth + 3:
            raise PayloadError(payloads.UNKNOWN_TOPIC, f"topic {name} is not in the tree")
        if parts[depth] == ENGINE_NODE:
            return  # an engine's own status (ours, retained, or another process's)
        leaf = parts[-1]
        if leaf == TELEMETRY:
            # A device this adapter was not told about: the fleet decides whether it is known.
            self._deliver(payloads.decode_telemetry(raw, parts[-2]))
        elif leaf == BATCH:
            self._on_batch(raw, None)
        elif leaf == STATUS:
            self._on_status(name, raw)
        elif leaf == ACK:
            self._on_ack(name, raw)
        else:
            raise PayloadError(payloads.UNKNOWN_TOPIC, f"topic {name} is not in the tree")

    def _on_status(self, name: str, raw: bytes | bytearray) -> None:
        if not raw:
            return  # a cleared retained status: the device was removed, nothing to say
        status = payloads.decode_status(raw)
        at = status.at if status.at is not None else self.clock.now()
        sink = self._sink
        assets = self._status.get(name)
        if sink is None:
            return
        if assets is None:
            parts = name.split("/")
            assets = [parts[-2]]
        for asset_id in assets:
            sink.set_available(asset_id, status.online, at)

    def _on_ack(self, name: str, raw: bytes | bytearray) -> None:
        message = payloads.decode_ack(raw)
        pending = self._pending.get(message.correlation_id)
        if pending is None:
            self.late_acks += 1  # timed out already, or another engine's setpoint
            return
        devices = self._ack_devices.get(name, {})
        asset_id = devices.get(message.device_id, pending.asset_id)
        if asset_id != pending.asset_id:
            raise PayloadError(
                payloads.BAD_VALUE,
                f"ack {message.correlation_id} names {message.device_id!r}, "
                f"sent to {pending.asset_id!r}",
            )
        ack = message.to_ack(asset_id)
        self.acknowledged[asset_id] = ack
        if not pending.future.done():
            pending.future.set_result(ack)

    def _deliver(self, measurement: Measurement) -> None:
        self._buffer.append(measurement)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Hand the readings of this event-loop turn to the sink in one call."""
        self._flush_scheduled = False
        batch = self._buffer
        if not batch or self._sink is None:
            return
        self._buffer = []
        self._last_message_at = self.clock.now()
        try:
            self._sink.accept(self.name, batch)
        except Exception:
            log.exception("%s: telemetry sink failed on %d readings", self.name, len(batch))

    def _reject(self, reason: str, detail: str) -> None:
        self.rejections[reason] += 1
        if self._sink is not None:
            self._sink.reject(self.name, reason, detail)

    def _refused(self, setpoint: Setpoint, reason: str) -> SetpointAck:
        if self.metrics is not None:
            self.metrics.setpoints_refused.labels(self.name, reason).inc()
        return SetpointAck(
            correlation_id=setpoint.correlation_id,
            asset_id=setpoint.asset_id,
            accepted=False,
            at=self.clock.now(),
            reason=reason,
        )


def mqtt_endpoints(park: Park) -> dict[MqttConnection, list[MqttEndpoint]]:
    """The park's MQTT-connected assets grouped by broker connection (direct or via gateway)."""
    grouped: dict[MqttConnection, list[MqttEndpoint]] = {}
    for enterprise, asset in park.iter_assets():
        connection = asset.connection
        if isinstance(connection, MqttConnection):
            ep = MqttEndpoint(asset.id, enterprise.id, asset.id, asset.id)
            grouped.setdefault(connection, []).append(ep)
        elif isinstance(connection, GatewayRef):
            gateway = next((g for g in enterprise.gateways if g.id == connection.gateway), None)
            if gateway is not None and isinstance(gateway.connection, MqttConnection):
                device_id = connection.device_id or asset.id
                ep = MqttEndpoint(asset.id, enterprise.id, gateway.id, device_id)
                grouped.setdefault(gateway.connection, []).append(ep)
    return grouped


def mqtt_adapters(
    park: Park, clock: Clock, metrics: Metrics | None = None
) -> Sequence[MqttAdapter]:
    """One adapter per distinct broker connection of the park."""
    adapters = []
    for index, (connection, endpoints) in enumerate(mqtt_endpoints(park).items()):
        name = f"mqtt{index}" if index else "mqtt"
        adapters.append(MqttAdapter(name, connection, endpoints, clock=clock, metrics=metrics))
    return adapters
