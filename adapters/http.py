"""HTTP adapter (aiohttp): poll an energy-management system's REST endpoint, accept pushed
telemetry, and POST setpoints whose response is the device's ack.

    GET  <base_url><telemetry_path>          -> a batch payload (docs/http.md), every poll period
    POST <push_listen><telemetry_path>       <- a batch payload pushed by the EMS (when push)
    POST <base_url><setpoint_path>           -> a setpoint payload; the response body is the ack
                                                (200), or 202 and the ack at .../<id> later

Payloads are those of adapters.payloads, shared with MQTT. A bearer token (from the
environment variable `token_env`) is sent on requests and required on pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from aiohttp import web

from adapters import payloads
from adapters._retry import Backoff
from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from vpp.clock import Clock, SystemClock
from vpp.config.schema import HttpConnection, Park
from vpp.domain import Setpoint, SetpointAck
from vpp.errors import AdapterError, PayloadError
from vpp.metrics import Metrics

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024  # a pushed or polled batch larger than this is refused
READ_BACK_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """An asset served by the EMS, with the id the EMS uses for it."""

    asset_id: str
    device_id: str


class HttpAdapter(Adapter):
    """The assets behind one EMS endpoint."""

    def __init__(
        self,
        name: str,
        connection: HttpConnection,
        endpoints: Iterable[HttpEndpoint],
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        token: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.connection = connection
        self.clock = clock if clock is not None else SystemClock()
        self.metrics = metrics
        self.backoff = backoff if backoff is not None else Backoff(base_s=0.5, cap_s=60.0)
        self._token = token if token is not None else self._token_from_env()
        endpoints = list(endpoints)
        self._devices = {e.device_id: e.asset_id for e in endpoints}
        self._device_of = {e.asset_id: e.device_id for e in endpoints}
        self._session: aiohttp.ClientSession | None = None
        self._sink: TelemetrySink | None = None
        self._state = ConnectionState.DISCONNECTED
        self._reconnects = 0
        self._failures_in_a_row = 0
        self._last_error = ""
        self._last_message_at: datetime | None = None
        self.push_port: int | None = None  # the bound port once pushes are served
        self.rejections: Counter[str] = Counter()
        self.polls = 0
        self.pushes = 0

    # --- Adapter ---------------------------------------------------------------------------

    @property
    def asset_ids(self) -> frozenset[str]:
        return frozenset(self._device_of)

    def health(self) -> AdapterHealth:
        return AdapterHealth(
            name=self.name,
            state=self._state,
            reconnects=self._reconnects,
            last_error=self._last_error,
            last_message_at=self._last_message_at,
        )

    async def run(self, sink: TelemetrySink) -> None:
        """Poll and/or serve pushes until cancelled."""
        self._sink = sink
        timeout = aiohttp.ClientTimeout(total=self.connection.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers()) as session:
            self._session = session
            try:
                async with asyncio.TaskGroup() as group:
                    if self.connection.push:
                        group.create_task(self._serve_pushes(), name=f"{self.name}-push")
                    if self.connection.poll:
                        group.create_task(self._poll_forever(session), name=f"{self.name}-poll")
            finally:
                self._session = None
                self._set_state(ConnectionState.DISCONNECTED)

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        """POST the setpoint; the response is the ack (200), or 202 and a read-back later."""
        device_id = self._device_of.get(setpoint.asset_id)
        if device_id is None:
            return self._refused(setpoint, "unknown_asset")
        if setpoint.expired(self.clock.now()):
            return self._refused(setpoint, "expired")
        session = self._session
        if session is None:
            return self._refused(setpoint, "disconnected")
        url = self.connection.base_url.rstrip("/") + self.connection.setpoint_path
        body = payloads.encode_setpoint(setpoint, device_id)
        try:
            async with asyncio.timeout(self.connection.timeout_s):
                with self._translate("POST setpoint"):
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as response:
                        status = response.status
                        text = await response.read()
                if status == 202:
                    text = await self._read_back(session, f"{url}/{setpoint.correlation_id}")
                elif status >= 400:
                    return self._refused(setpoint, self._reason(status, text))
            ack = payloads.decode_ack(text).to_ack(setpoint.asset_id)
        except TimeoutError:
            return self._refused(setpoint, "timeout")
        except AdapterError:
            return self._refused(setpoint, "disconnected")
        except PayloadError as err:
            self._reject(err.reason, f"ack for {setpoint.asset_id}: {err}")
            return self._refused(setpoint, "bad_ack")
        if ack.correlation_id != setpoint.correlation_id:
            return self._refused(setpoint, "bad_ack")
        # sent / acked / refused and the ack latency are counted by the control loop
        return ack

    # --- polling ---------------------------------------------------------------------------

    async def _poll_forever(self, session: aiohttp.ClientSession) -> None:
        url = self.connection.base_url.rstrip("/") + self.connection.telemetry_path
        while True:
            started = time.monotonic()
            try:
                await self.poll_once(session, url)
            except AdapterError as err:
                self._failed(err)
                await asyncio.sleep(self.backoff.next_delay())
                continue
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(self.connection.poll_interval_s - elapsed, 0.0))

    async def poll_once(self, session: aiohttp.ClientSession, url: str) -> int:
        """One GET; returns the readings accepted. Raises AdapterError when the EMS fails."""
        if self._state is not ConnectionState.CONNECTED:
            self._set_state(ConnectionState.CONNECTING)
        with self._translate(f"GET {url}"):
            async with asyncio.timeout(self.connection.timeout_s):
                async with session.get(url) as response:
                    if response.status != 200:
                        raise AdapterError(self.name, f"GET {url}: HTTP {response.status}")
                    body = await response.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise AdapterError(self.name, f"GET {url}: body larger than {MAX_BODY_BYTES} bytes")
        self.polls += 1
        if self._failures_in_a_row:
            self._reconnects += 1
            if self.metrics is not None:
                self.metrics.adapter_reconnects.labels(self.name).inc()
        self._failures_in_a_row = 0
        self.backoff.reset()
        self._set_state(ConnectionState.CONNECTED)
        return self._ingest(body, f"GET {url}")

    def _failed(self, err: AdapterError) -> None:
        if self._failures_in_a_row == 0:
            log.warning("%s", err)
        self._failures_in_a_row += 1
        self._last_error = str(err)
        self._set_state(ConnectionState.DISCONNECTED)

    # --- pushes ----------------------------------------------------------------------------

    def push_app(self) -> web.Application:
        """The aiohttp application that accepts pushed batches (mountable in another app)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(self.connection.telemetry_path, self._on_push)
        return app

    async def _serve_pushes(self) -> None:
        listen = self.connection.push_listen or "127.0.0.1:0"
        host, port = listen.rsplit(":", 1)
        runner = web.AppRunner(self.push_app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, int(port))
            with self._translate(f"listen on {listen}"):
                await site.start()
            server = site._server  # the bound port, for listen addresses ending in ':0'
            sockets = getattr(server, "sockets", None) or []
            self.push_port = sockets[0].getsockname()[1] if sockets else int(port)
            if not self.connection.poll:
                self._set_state(ConnectionState.CONNECTED)
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            await runner.cleanup()

    async def _on_push(self, request: web.Request) -> web.Response:
        if self._token is not None:
            supplied = request.headers.get("Authorization", "")
            if not hmac.compare_digest(supplied, f"Bearer {self._token}"):
                return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._reject("too_large", "pushed body")
            return web.json_response({"error": "too_large"}, status=413)
        self.pushes += 1
        before = dict(self.rejections)
        accepted = self._ingest(body, "push")
        rejected = sum(self.rejections.values()) - sum(before.values())
        status = 400 if accepted == 0 and rejected else 202
        return web.json_response({"accepted": accepted, "rejected": rejected}, status=status)

    # --- shared ----------------------------------------------------------------------------

    def _ingest(self, body: bytes, where: str) -> int:
        """Decode a batch and deliver it; bad payloads are rejected, never raised."""
        try:
            result = payloads.decode_batch(body, self._devices)
        except PayloadError as err:
            self._reject(err.reason, f"{where}: {err}")
            return 0
        for reason, detail in result.errors:
            self._reject(reason, f"{where}: {detail}")
        if not result.measurements or self._sink is None:
            return 0
        self._last_message_at = self.clock.now()
        return self._sink.accept(self.name, result.measurements)

    async def _read_back(self, session: aiohttp.ClientSession, url: str) -> bytes:
        """Poll the setpoint's status URL until the device has answered (within the timeout)."""
        while True:
            with self._translate(f"GET {url}"):
                async with session.get(url) as response:
                    status = response.status
                    text = await response.read()
            if status == 200:
                return text
            if status != 202:
                raise PayloadError(payloads.BAD_VALUE, f"read-back {url}: HTTP {status}")
            await asyncio.sleep(READ_BACK_INTERVAL_S)

    @contextlib.contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        """The one place aiohttp and socket errors become AdapterError."""
        try:
            yield
        except aiohttp.ClientError as err:
            raise AdapterError(self.name, f"{doing}: {err}") from err
        except OSError as err:
            if isinstance(err, TimeoutError):
                raise
            raise AdapterError(self.name, f"{doing}: {err}") from err

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token is not None else {}

    def _token_from_env(self) -> str | None:
        variable = self.connection.token_env
        if variable is None:
            return None
        value = os.environ.get(variable)
        if value is None:
            raise AdapterError(self.name, f"environment variable {variable} is not set")
        return value

    @staticmethod
    def _reason(status: int, text: bytes) -> str:
        with contextlib.suppress(PayloadError):
            body = payloads.load_json(text)
            if isinstance(body, dict) and isinstance(body.get("reason"), str) and body["reason"]:
                return str(body["reason"])
        return f"http_{status}"

    def _set_state(self, state: ConnectionState) -> None:
        self._state = state
        if self.metrics is not None:
            connected = 1 if state is ConnectionState.CONNECTED else 0
            self.metrics.adapter_connected.labels(self.name).set(connected)

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


def http_adapters(
    park: Park, clock: Clock, metrics: Metrics | None = None
) -> Sequence[HttpAdapter]:
    """One adapter per distinct EMS connection of the park (direct or through a gateway)."""
    grouped: dict[HttpConnection, list[HttpEndpoint]] = {}
    for enterprise, asset in park.iter_assets():
        route = enterprise.route(asset)
        if isinstance(route.connection, HttpConnection):
            grouped.setdefault(route.connection, []).append(HttpEndpoint(asset.id, route.device_id))
    return [
        HttpAdapter(
            f"http{i}" if i else "http", connection, endpoints, clock=clock, metrics=metrics
        )
        for i, (connection, endpoints) in enumerate(grouped.items())
    ]
