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

Setpoints sent in one event-loop turn are coalesced per endpoint: an endpoint whose status
says `set_batch` gets them in one `.../set` message and answers with one batched ack; others
get one message per setpoint. Setpoints are published without waiting for each PUBACK (QoS 1
with many in flight); `send` waits only for the device's ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters import payloads
from adapters._retry import Backoff
from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from vpp.clock import Clock, SystemClock
from vpp.config.schema import MqttConnection, Park
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
READ_SIZE = 65536  # bytes asked of the socket per recv (see _PacketReader)
READS_PER_WAKEUP = 4  # recv calls per socket wakeup: bounds the time one wakeup holds the loop
MAX_INFLIGHT = 1000  # QoS 1 messages the engine may have awaiting PUBACK
MAX_SET_BATCH = 500  # setpoints per batched `.../set` message
# Socket options of device clients: a small ack must not wait for the peer's delayed ACK
# (Nagle's algorithm holds a small write while an earlier one is unacknowledged: up to 40 ms).
# The engine's own client does not set it: with it, the embedded test broker (amqtt) was seen
# to leave a connection unclosed when the engine disconnects right after a setpoint's ack.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
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


class _PacketReader:
    """Reads a connection's socket in large chunks and parses PUBLISH packets itself.

    paho reads each packet with three or more `recv` calls and wraps it in two message
    objects before a callback sees it; at tens of thousands of messages a second that is most
    of the engine's time. This reader takes up to READ_SIZE bytes per `recv`, splits the
    packets, hands each QoS 0/1 PUBLISH as (topic, payload) to `deliver` and queues the
    PUBACKs of one chunk as one write. Every other packet (CONNACK, SUBACK, PUBACK, PINGRESP,
    DISCONNECT, QoS 2, an MQTT 5 topic alias) goes to paho's own handler, so paho's state
    machine stays in charge of the session. It relies on paho 2.x internals and is used
    only with paho 2.x and aiomqtt 2.x (`_FAST_READ`).
    """

    __slots__ = ("_broken", "_client", "_deliver", "_pending", "_v5")

    def __init__(
        self,
        client: paho.Client,
        deliver: Callable[[str, bytes], None],
        broken: Callable[[Exception], None],
    ) -> None:
        self._client = client
        self._deliver = deliver
        self._broken = broken
        self._pending = b""  # the start of a packet whose end has not arrived yet
        self._v5 = client.protocol == paho.MQTTv5

    def on_readable(self) -> None:
        client = self._client
        try:
            for _ in range(READS_PER_WAKEUP):
                if not self._read_once():
                    return
            # TLS: bytes already decrypted wait in the SSL object, and the socket will not
            # signal them: drain them now (at most one TLS record).
            pending = getattr(client.socket(), "pending", None)
            while pending is not None and pending() > 0:
                if not self._read_once():
                    return
        except Exception as exc:  # the link broke: report it as aiomqtt does
            self._broken(exc)

    def _read_once(self) -> bool:
        """One `recv` and the packets it completes; False when there is nothing more now."""
        client = self._client
        if client.socket() is None:
            return False
        try:
            data = client._sock_recv(READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return False
        if not data:
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return False
        with client._msgtime_mutex:
            client._last_bytes_received = paho.time_func()
        if self._pending:
            data = self._pending + data
        rc = self._parse(data)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            client._loop_rc_handle(rc)
            return False
        return client.socket() is not None

    def _parse(self, data: bytes) -> MQTTErrorCode:
        end = len(data)
        pos = 0
        acks: list[int] = []
        deliver = self._deliver
        v5 = self._v5
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while end - pos >= 2:
            header = data[pos]
            length = data[pos + 1]
            start = pos + 2
            if length & 0x80:
                decoded = _varint(data, pos + 1, end)
                if decoded is None:
                    break  # the length itself is cut: wait for more
                length, start = decoded
                if length < 0:
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
            stop = start + length
            if stop > end:
                break
            # PUBLISH with QoS 0 or 1 (0x30..0x33, 0x38..0x3B: DUP and RETAIN may be set)
            if header & 0xF4 == 0x30 and length >= 2:
                topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
                at = topic_end + 2 if header & 0x02 else topic_end
                if v5:
                    if at < stop and not data[at] & 0x80:
                        at += 1 + data[at]
                    else:
                        decoded = _varint(data, at, stop)
                        at = (
                            stop + 1
                            if decoded is None or decoded[0] < 0
                            else decoded[1] + decoded[0]
                        )
                if topic_end == start + 2 or at > stop:
                    # an MQTT 5 topic alias, or a packet paho should judge: paho decides
                    rc = self._delegate(header, data[start:stop])
                else:
                    if header & 0x02:
                        acks.append(0x40020000 | (data[topic_end] << 8) | data[topic_end + 1])
                    try:
                        topic = data[start + 2 : topic_end].decode()
                    except UnicodeDecodeError:
                        rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                        break
                    deliver(topic, data[at:stop])
            else:
                rc = self._delegate(header, data[start:stop])
            pos = stop
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._pending = data[pos:] if pos < end else b""
        if acks:
            # One write for all the chunk's PUBACKs, after their messages were handled.
            packet = struct.pack(f">{len(acks)}I", *acks)
            self._client._packet_queue(paho.PUBACK, packet, 0, 0)
        return rc

    def _delegate(self, header: int, body: bytes) -> MQTTErrorCode:
        """Let paho handle one whole packet as if its own reader had read it."""
        client = self._client
        client._in_packet = {
            "command": header,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = client._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            client._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }
        return rc


def _varint(data: bytes, at: int, end: int) -> tuple[int, int] | None:
    """The MQTT variable byte integer at `at` and the index after it.

    None when the bytes end before it does; a value of -1 when it is longer than 4 bytes.
    """
    value = 0
    shift = 0
    while at < end:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 21:
            return -1, at
    return None


class _FastReadClient(aiomqtt.Client):
    """An aiomqtt client whose socket reader is a `_PacketReader`.

    It overrides the one hook that registers the socket reader (the same body as aiomqtt
    2.x's, with another callback); PUBLISH packets go to `on_publish` and never become
    aiomqtt messages, anything paho handles reaches aiomqtt as usual.
    """

    def __init__(self, *args: Any, on_publish: Callable[[str, bytes], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_publish_packet = on_publish

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        reader = _PacketReader(client, self._on_publish_packet, self._broken)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), reader.on_readable)
        self._loop.call_soon_threadsafe(create_misc_task)

    def _broken(self, exc: Exception) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)


_FAST_READ = aiomqtt.__version_tuple__[0] == 2 and paho_version.startswith("2.")


def publish_nowait(
    client: aiomqtt.Client,
    topic_name: str,
    body: bytes,
    qos: int = QOS_CONTROL,
    properties: Properties | None = None,
) -> bool:
    """Queue a PUBLISH without waiting for its PUBACK; False when it could not be queued.

    aiomqtt's `publish` waits for the broker's PUBACK, so messages sent one after another go
    one round trip at a time. Setpoints and acks are answered end to end (by the ack, by the
    engine resending), so the broker's receipt of each is not worth a round trip.
    """
    info = client._client.publish(topic_name, body, qos, False, properties)
    return info.rc == paho.MQTT_ERR_SUCCESS


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


@dataclass(frozen=True, slots=True)
class _Node:
    """The topics of one endpoint (a device, or a gateway relaying for several)."""

    set_topic: str
    ack_topic: str
    status_topic: str


@dataclass(slots=True)
class _Outgoing:
    """A setpoint waiting for the end of the event-loop turn to be published."""

    setpoint: Setpoint
    device_id: str


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
        self._nodes: dict[str, _Node] = {}  # by asset id
        nodes: dict[tuple[str, str], _Node] = {}
        for ep in endpoints:
            self._endpoints[ep.asset_id] = ep
            node = (ep.enterprise_id, ep.endpoint_id)
            if node not in nodes:
                nodes[node] = _Node(
                    topic(prefix, *node, SET),
                    topic(prefix, *node, ACK),
                    topic(prefix, *node, STATUS),
                )
            self._nodes[ep.asset_id] = nodes[node]
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
        self._outgoing: dict[_Node, list[_Outgoing]] = {}
        self._send_scheduled = False
        self._set_batch: set[str] = set()  # status topics of endpoints that take batched sets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connects = 0
        self.messages = 0  # PUBLISH packets handled
        self.set_messages = 0  # `.../set` PUBLISH packets sent (a batch counts once)
        self.rejections: Counter[str] = Counter()
        self.late_acks = 0
        self.acknowledged: dict[str, SetpointAck] = {}  # last ack per asset, kept across links

    # --- Adapter ---------------------------------------------------------------------------

    @property
    def asset_ids(self) -> frozenset[str]:
        return frozenset(self._endpoints)

    def takes_set_batch(self, asset_id: str) -> bool:
        """Whether the asset's endpoint announced (in its status) batched setpoints."""
        node = self._nodes.get(asset_id)
        return node is not None and node.status_topic in self._set_batch

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
        """Queue the setpoint for this loop turn's `.../set` message(s); wait for the ack.

        The wait is `ack_timeout_s` from the call; a setpoint that could not be published is
        refused as `disconnected`.
        """
        endpoint = self._endpoints.get(setpoint.asset_id)
        if endpoint is None:
            return self._refused(setpoint, "unknown_asset")
        if setpoint.expired(self.clock.now()):
            return self._refused(setpoint, "expired")
        if self._client is None or self._state is not ConnectionState.CONNECTED:
            return self._refused(setpoint, "disconnected")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SetpointAck] = loop.create_future()
        correlation_id = setpoint.correlation_id
        self._pending[correlation_id] = _Pending(setpoint.asset_id, future)
        node = self._nodes[setpoint.asset_id]
        queued = self._outgoing.get(node)
        if queued is None:
            queued = self._outgoing[node] = []
        queued.append(_Outgoing(setpoint, endpoint.device_id))
        if not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_queued)
        try:
            async with asyncio.timeout(self.connection.ack_timeout_s):
                ack = await future
        except TimeoutError:
            return self._refused(setpoint, "timeout")
        finally:
            self._pending.pop(correlation_id, None)
        # sent / acked / refused and the ack latency are counted by the control loop
        return ack

    def _send_queued(self) -> None:
        """Publish the setpoints queued in the last loop turn, one message per endpoint."""
        self._send_scheduled = False
        outgoing = self._outgoing
        self._outgoing = {}
        now = self.clock.now()
        for node, items in outgoing.items():
            live = []
            for item in items:
                pending = self._pending.get(item.setpoint.correlation_id)
                if pending is None or pending.future.done():
                    continue  # its caller gave up already
                if item.setpoint.expired(now):
                    pending.future.set_result(self._refused(item.setpoint, "expired"))
                else:
                    live.append(item)
            if not live:
                continue
            if len(live) > 1 and node.status_topic in self._set_batch:
                for first in range(0, len(live), MAX_SET_BATCH):
                    self._publish_setpoints(node, live[first : first + MAX_SET_BATCH], now)
            else:
                for item in live:
                    self._publish_setpoints(node, [item], now)

    def _publish_setpoints(self, node: _Node, items: list[_Outgoing], now: datetime) -> None:
        client = self._client
        properties = None
        if self.connection.protocol == "5":
            properties = _properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = node.ack_topic
            if len(items) == 1:
                properties.CorrelationData = items[0].setpoint.correlation_id.encode()
            # The broker drops a setpoint that would reach the device after it expired.
            valid_until = min(item.setpoint.valid_until for item in items)
            remaining_s = (valid_until - now).total_seconds()
            properties.MessageExpiryInterval = max(1, math.ceil(remaining_s))
        if len(items) == 1:
            item = items[0]
            body = payloads.encode_setpoint(item.setpoint, item.device_id, reply_to=node.ack_topic)
        else:
            pairs = [(item.setpoint, item.device_id) for item in items]
            body = payloads.encode_setpoints(pairs, reply_to=node.ack_topic)
        sent = False
        if client is not None and self._state is ConnectionState.CONNECTED:
            try:
                sent = publish_nowait(client, node.set_topic, body, QOS_CONTROL, properties)
            except (OSError, ValueError) as err:
                log.warning("%s: publish setpoint: %s", self.name, err)
        if sent:
            self.set_messages += 1
            return
        for item in items:
            pending = self._pending.get(item.setpoint.correlation_id)
            if pending is not None and not pending.future.done():
                pending.future.set_result(self._refused(item.setpoint, "disconnected"))

    # --- connection ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        """The one place aiomqtt, paho and socket errors become AdapterError."""
        try:
            yield
        except aiomqtt.MqttError as err:
            raise AdapterError(self.name, f"{doing}: {err}") from err
        except TimeoutError as err:
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
        options["max_inflight_messages"] = MAX_INFLIGHT
        if _FAST_READ:
            return _FastReadClient(c.host, c.port, on_publish=self._on_publish, **options)
        return aiomqtt.Client(c.host, c.port, **options)

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
        """A PUBLISH that paho decoded (see `_PacketReader`, or every one without it)."""
        raw = message.payload
        if not isinstance(raw, bytes | bytearray):
            self.messages += 1
            name = message.topic.value
            self._reject(payloads.WRONG_TYPE, f"payload on {name} is not bytes")
            return
        self._on_publish(message.topic.value, raw)

    def _on_publish(self, name: str, raw: bytes | bytearray) -> None:
        """Decode one PUBLISH; never raises (an exception here would drop the connection)."""
        self.messages += 1
        try:
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
            self._set_batch.discard(name)
            return  # a cleared retained status: the device was removed, nothing to say
        status = payloads.decode_status(raw)
        if status.online and status.set_batch:
            self._set_batch.add(name)
        else:
            self._set_batch.discard(name)
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
        """One ack or a batch of them (both forms are accepted from every endpoint)."""
        batch = payloads.decode_acks(raw)
        for reason, detail in batch.errors:
            self._reject(reason, f"{name}: {detail}")
        devices = self._ack_devices.get(name, {})
        for message in batch.acks:
            pending = self._pending.get(message.correlation_id)
            if pending is None:
                self.late_acks += 1  # timed out already, or another engine's setpoint
                continue
            asset_id = devices.get(message.device_id, pending.asset_id)
            if asset_id != pending.asset_id:
                self._reject(
                    payloads.BAD_VALUE,
                    f"{name}: ack {message.correlation_id} names {message.device_id!r}, "
                    f"sent to {pending.asset_id!r}",
                )
                continue
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
        route = enterprise.route(asset)
        if isinstance(route.connection, MqttConnection):
            ep = MqttEndpoint(asset.id, enterprise.id, route.endpoint_id, route.device_id)
            grouped.setdefault(route.connection, []).append(ep)
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
