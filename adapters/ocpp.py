"""OCPP central system (CSMS) adapter: EV charge points speaking OCPP 1.6 or 2.0.1.

One websockets server; a charge point connects at ws://host:port/<charge_point_id> with the
subprotocol ocpp1.6 or ocpp2.0.1 and maps to the asset whose OcppConnection names that id.
MeterValues (and 2.0.1 TransactionEvent meter values) become Measurements; a setpoint becomes a
SetChargingProfile with the station-wide maximum profile, and the ack is the charge point's
Accepted / Rejected. Calls to a charge point run in that connection's outbox task, never inside
an incoming-message handler: the library routes replies from the same loop that runs handlers,
so a call awaited there would wait for itself.
"""

from __future__ import annotations

import asyncio
import http
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ocpp.exceptions import (
    FormationViolationError,
    FormatViolationError,
    NotSupportedError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.exceptions import (
    NotImplementedError as OcppNotImplementedError,
)
from ocpp.messages import MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16 import datatypes as types16
from ocpp.v16 import enums as enums16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201 import datatypes as types201
from ocpp.v201 import enums as enums201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from adapters._retry import Backoff
from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from vpp.clock import Clock
from vpp.config.schema import OcppConnection
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import AdapterError, PayloadError

log = logging.getLogger(__name__)
wire_log = logging.getLogger(__name__ + ".wire")  # the library logs every frame at INFO

SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
MAX_PROFILE_ID = 1  # one station-max profile per station, replaced by every new setpoint
OUTBOX_SIZE = 8
PHASES = ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N")
_UNAVAILABLE = frozenset({"Unavailable", "Faulted"})
USED_MEASURANDS = frozenset(
    {"Power.Active.Import", "Power.Active.Export", "Energy.Active.Import.Register", "SoC"}
)
_SCALE_TO_BASE = {"W": 1.0, "kW": 1000.0, "Wh": 1.0, "kWh": 1000.0, "Percent": 1.0}


@dataclass(frozen=True, slots=True)
class OcppStation:
    """One enrolled asset reached through a charge point."""

    asset_id: str
    connection: OcppConnection


_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def handles(action: str) -> Callable[[_Handler], _Handler]:
    """`ocpp.routing.on`, typed: marks a method as the handler of an incoming action."""
    decorator: Callable[[_Handler], _Handler] = on(action)
    return decorator


def _reason(error: OCPPError) -> str:
    """A short metric label for a protocol error a charge point caused."""
    if isinstance(error, OcppNotImplementedError | NotSupportedError):
        return "unsupported_action"
    if isinstance(
        error,
        FormatViolationError
        | FormationViolationError
        | TypeConstraintViolationError
        | PropertyConstraintViolationError
        | OccurenceConstraintViolationError,
    ):
        return "invalid_payload"
    return "protocol_error"


# --- MeterValues decoding (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterReading:
    """What one MeterValue says about one connector (None: not in the sample)."""

    timestamp: datetime
    power_w: float | None
    energy_wh: float | None
    soc_percent: float | None


def parse_timestamp(text: object) -> datetime:
    if not isinstance(text, str):
        raise PayloadError("bad_timestamp", f"timestamp {text!r} is not a string")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise PayloadError("bad_timestamp", f"timestamp {text!r} is not ISO 8601") from err
    if moment.tzinfo is None:
        raise PayloadError("naive_timestamp", f"timestamp {text!r} has no UTC offset")
    return moment


def _sample_value(sample: Mapping[str, Any], version: str) -> tuple[str, str | None, float]:
    """(measurand, phase, value in W / Wh / %) of one sampled value."""
    measurand = sample.get("measurand", "Energy.Active.Import.Register")
    if not isinstance(measurand, str):
        raise PayloadError("wrong_type", f"measurand {measurand!r} is not a string")
    if version == "1.6":
        if sample.get("format") == "SignedData":
            raise PayloadError("unsupported_format", "signed meter data is not decoded")
        raw = sample.get("value")
        if not isinstance(raw, str):
            raise PayloadError("wrong_type", f"{measurand} value {raw!r} is not a string")
        unit = sample.get("unit")
        multiplier = 0
    else:
        raw = sample.get("value")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise PayloadError("wrong_type", f"{measurand} value {raw!r} is not a number")
        uom = sample.get("unit_of_measure") or {}
        if not isinstance(uom, Mapping):
            raise PayloadError("wrong_type", f"{measurand} unit_of_measure is not an object")
        unit = uom.get("unit")
        multiplier = uom.get("multiplier", 0)
        if isinstance(multiplier, bool) or not isinstance(multiplier, int):
            raise PayloadError("wrong_type", f"{measurand} multiplier {multiplier!r}")
        if not -24 <= multiplier <= 24:  # beyond yocto..yotta: corrupt, and 10.0**400 overflows
            raise PayloadError("malformed", f"{measurand} multiplier {multiplier} is out of range")
    try:
        value = float(raw)
    except ValueError as err:
        raise PayloadError("wrong_type", f"{measurand} value {raw!r} is not a number") from err
    if not math.isfinite(value):
        raise PayloadError("malformed", f"{measurand} value {raw!r} is not finite")
    if unit is not None and (not isinstance(unit, str) or unit not in _SCALE_TO_BASE):
        raise PayloadError("unsupported_unit", f"{measurand} in {unit!r}")
    scaled = value * _SCALE_TO_BASE.get(unit or "", 1.0) * 10.0**multiplier
    if not math.isfinite(scaled):
        raise PayloadError("malformed", f"{measurand} value {raw!r} {unit or ''} is out of range")
    phase = sample.get("phase")
    return measurand, phase if isinstance(phase, str) else None, scaled


def _combine(values: list[tuple[str | None, float]]) -> float | None:
    """The total of a measurand: its phaseless value, else the sum over the phases."""
    if not values:
        return None
    total = [v for phase, v in values if phase is None]
    if total:
        return total[-1]
    per_phase = [v for phase, v in values if phase in PHASES]
    return sum(per_phase) if per_phase else None


def decode_meter_value(meter_value: object, version: str) -> MeterReading:
    """One MeterValue (snake_case keys, as the library hands it over) as a reading."""
    if not isinstance(meter_value, Mapping):
        raise PayloadError("malformed", "meter value is not an object")
    timestamp = parse_timestamp(meter_value.get("timestamp"))
    samples = meter_value.get("sampled_value")
    if not isinstance(samples, list) or not samples:
        raise PayloadError("malformed", "meter value has no sampled values")
    found: dict[str, list[tuple[str | None, float]]] = {}
    for sample in samples:
        if not isinstance(sample, Mapping):
            raise PayloadError("malformed", "sampled value is not an object")
        measurand = sample.get("measurand", "Energy.Active.Import.Register")
        if isinstance(measurand, str) and measurand not in USED_MEASURANDS:
            continue  # voltage, current, temperature...: not needed, not judged
        measurand, phase, value = _sample_value(sample, version)
        found.setdefault(measurand, []).append((phase, value))
    imported = _combine(found.get("Power.Active.Import", []))
    exported = _combine(found.get("Power.Active.Export", []))
    power = None
    if imported is not None or exported is not None:
        power = (imported or 0.0) - (exported or 0.0)
    reading = MeterReading(
        timestamp=timestamp,
        power_w=power,
        energy_wh=_combine(found.get("Energy.Active.Import.Register", [])),
        soc_percent=_combine(found.get("SoC", [])),
    )
    for total in (reading.power_w, reading.energy_wh, reading.soc_percent):
        if total is not None and not math.isfinite(total):  # finite phases, infinite sum
            raise PayloadError("malformed", "meter value sums beyond the float range")
    return reading


@dataclass(slots=True)
class _StationTotals:
    """Latest per-connector readings, summed into the station's measurement."""

    connector_id: int
    power_w: dict[int, float] = field(default_factory=dict)
    energy_wh: dict[int, float] = field(default_factory=dict)
    soc_percent: dict[int, float] = field(default_factory=dict)

    def update(self, connector: int, reading: MeterReading) -> bool:
        """Take a reading; False when it is for a connector this asset does not cover."""
        if self.connector_id and connector != self.connector_id:
            return False
        if reading.power_w is not None:
            self.power_w[connector] = reading.power_w
        if reading.energy_wh is not None:
            self.energy_wh[connector] = reading.energy_wh
        if reading.soc_percent is not None:
            self.soc_percent[connector] = reading.soc_percent
        return True

    @staticmethod
    def _total(values: dict[int, float]) -> float | None:
        if not values:
            return None
        if 0 in values:  # the station's own meter, when it reports one
            return values[0]
        return sum(values.values())

    def measurement(self, asset_id: str, timestamp: datetime) -> Measurement:
        power = self._total(self.power_w)
        if power is None:
            raise PayloadError("no_power", f"{asset_id}: no Power.Active.Import reported yet")
        energy = self._total(self.energy_wh)
        socs = list(self.soc_percent.values())
        if not math.isfinite(power) or (energy is not None and not math.isfinite(energy)):
            raise PayloadError("malformed", f"{asset_id}: connector totals beyond the float range")
        return Measurement(
            asset_id=asset_id,
            timestamp=timestamp,
            power_kw=power / 1000.0,
            energy_kwh=energy / 1000.0 if energy is not None else None,
            soc_fraction=sum(socs) / len(socs) / 100.0 if socs else None,
        )


# --- charging profiles (pure) ------------------------------------------------------------------


def profile_limit(setpoint: Setpoint, conn: OcppConnection) -> tuple[float, float]:
    """(limit in the profile's unit, the same limit in kW) for a setpoint.

    A station maximum profile caps consumption; it cannot ask for discharge, so a negative
    setpoint caps at zero.
    """
    watts = max(setpoint.power_kw, 0.0) * 1000.0
    if conn.charging_rate_unit == "A":
        amps = math.floor(watts / (conn.voltage_v * conn.phases) * 10.0) / 10.0
        return amps, amps * conn.voltage_v * conn.phases / 1000.0
    limit = math.floor(watts * 10.0) / 10.0  # OCPP limits carry one decimal
    return limit, limit / 1000.0


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def charging_profile_call(setpoint: Setpoint, conn: OcppConnection) -> tuple[Any, float]:
    """The SetChargingProfile request for a setpoint and the limit it applies, in kW."""
    limit, limit_kw = profile_limit(setpoint, conn)
    duration = max(math.ceil((setpoint.valid_until - setpoint.issued_at).total_seconds()), 1)
    valid_to = setpoint.issued_at + timedelta(seconds=duration)
    phases = conn.phases if conn.charging_rate_unit == "A" else None
    if conn.version == "1.6":
        profile16 = types16.ChargingProfile(
            charging_profile_id=MAX_PROFILE_ID,
            stack_level=0,
            charging_profile_purpose=enums16.ChargingProfilePurposeType.charge_point_max_profile,
            charging_profile_kind=enums16.ChargingProfileKindType.absolute,
            charging_schedule=types16.ChargingSchedule(
                charging_rate_unit=enums16.ChargingRateUnitType(conn.charging_rate_unit),
                charging_schedule_period=[
                    types16.ChargingSchedulePeriod(
                        start_period=0, limit=limit, number_phases=phases
                    )
                ],
                duration=duration,
                start_schedule=_iso(setpoint.issued_at),
            ),
            valid_from=_iso(setpoint.issued_at),
            valid_to=_iso(valid_to),
        )
        # ChargePointMaxProfile is only valid on connector 0, the whole charge point
        return call16.SetChargingProfile(connector_id=0, cs_charging_profiles=profile16), limit_kw
    profile201 = types201.ChargingProfileType(
        id=MAX_PROFILE_ID,
        stack_level=0,
        charging_profile_purpose=enums201.ChargingProfilePurposeEnumType.charging_station_max_profile,
        charging_profile_kind=enums201.ChargingProfileKindEnumType.absolute,
        charging_schedule=[
            types201.ChargingScheduleType(
                id=MAX_PROFILE_ID,
                charging_rate_unit=enums201.ChargingRateUnitEnumType(conn.charging_rate_unit),
                charging_schedule_period=[
                    types201.ChargingSchedulePeriodType(
                        start_period=0, limit=limit, number_phases=phases
                    )
                ],
                duration=duration,
                start_schedule=_iso(setpoint.issued_at),
            )
        ],
        valid_from=_iso(setpoint.issued_at),
        valid_to=_iso(valid_to),
    )
    return call201.SetChargingProfile(evse_id=0, charging_profile=profile201), limit_kw


# --- per-connection session --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CallOutcome:
    status: str | None  # the charge point's status, None when no answer came
    reason: str = ""


class _Session:
    """One connected charge point: the library object, its totals and its outbox."""

    def __init__(
        self,
        central: OcppCentralSystem,
        station: OcppStation,
        websocket: ServerConnection,
        version: str,
    ) -> None:
        self.central = central
        self.station = station
        self.websocket = websocket
        self.version = version
        self.totals = _StationTotals(station.connection.connector_id)
        self.outbox: asyncio.Queue[tuple[Any, asyncio.Future[_CallOutcome]]] = asyncio.Queue(
            OUTBOX_SIZE
        )
        self.in_flight: asyncio.Future[_CallOutcome] | None = None
        cls = _Station16 if version == "1.6" else _Station201
        self.point: ChargePoint16 | ChargePoint201 = cls(
            station.connection.charge_point_id,
            websocket,
            self,
            response_timeout=station.connection.timeout_s,
        )

    @property
    def asset_id(self) -> str:
        return self.station.asset_id

    def reject(self, reason: str, detail: str) -> None:
        self.central.bad_payload(reason, f"{self.station.connection.charge_point_id}: {detail}")

    def meter_values(self, connector: object, meter_values: object) -> None:
        """Turn MeterValues into measurements; bad ones are counted, never raised."""
        if isinstance(connector, bool) or not isinstance(connector, int):
            self.reject("wrong_type", f"connector {connector!r}")
            return
        if not isinstance(meter_values, list):
            self.reject("malformed", "meter_value is not a list")
            return
        batch: list[Measurement] = []
        for meter_value in meter_values:
            try:
                reading = decode_meter_value(meter_value, self.version)
                if self.totals.update(connector, reading):
                    batch.append(self.totals.measurement(self.asset_id, reading.timestamp))
            except PayloadError as err:
                self.reject(err.reason, str(err))
        if batch:
            self.central.deliver(batch)

    def status(self, status: object) -> None:
        if isinstance(status, str):
            self.central.availability(self.asset_id, status not in _UNAVAILABLE)

    # --- outgoing calls: only this task talks to the charge point --------------------------

    async def outbox_loop(self) -> None:
        timeout_s = self.station.connection.timeout_s
        while True:
            payload, future = await self.outbox.get()
            if future.done():  # the caller already gave up
                continue
            self.in_flight = future
            try:
                async with asyncio.timeout(timeout_s):
                    response = await self.point.call(payload, suppress=False)
                outcome = _CallOutcome(str(response.status))
            except TimeoutError:
                outcome = _CallOutcome(None, "timeout")
            except OCPPError as err:
                log.info(
                    "%s: %s answered with a CALLERROR: %s", self.central.name, self.asset_id, err
                )
                outcome = _CallOutcome(None, "call_error")
            except ConnectionClosed:
                outcome = _CallOutcome(None, "disconnected")
            self.in_flight = None
            if not future.done():
                future.set_result(outcome)

    def fail_pending(self) -> None:
        """Answer every call still waiting: the connection is gone."""
        if self.in_flight is not None and not self.in_flight.done():
            self.in_flight.set_result(_CallOutcome(None, "disconnected"))
        while not self.outbox.empty():
            _, future = self.outbox.get_nowait()
            if not future.done():
                future.set_result(_CallOutcome(None, "disconnected"))


class _RoutingMixin:
    """Counts what the library would only log: unparsable frames and invalid calls."""

    _session: _Session

    async def route_message(self, raw_msg: str | bytes) -> None:
        try:
            msg = unpack(raw_msg)
        except OCPPError as err:
            self._session.reject("malformed", f"unparsable frame: {err}")
            return
        except Exception as err:  # not even JSON of the right shape
            self._session.reject("malformed", f"unparsable frame: {err!r}")
            return
        if msg.message_type_id == MessageType.Call:
            try:
                await self._handle_call(msg)  # type: ignore[attr-defined]
            except OCPPError as err:
                self._session.reject(_reason(err), f"{msg.action}: {err}")
                await self._send(msg.create_call_error(err).to_json())  # type: ignore[attr-defined]
        elif msg.message_type_id in (MessageType.CallResult, MessageType.CallError):
            self._response_queue.put_nowait(msg)  # type: ignore[attr-defined]


def _now_iso(session: _Session) -> str:
    return session.central.clock.now().isoformat()


class _Station16(_RoutingMixin, ChargePoint16):  # type: ignore[misc]
    def __init__(
        self, cp_id: str, websocket: ServerConnection, session: _Session, response_timeout: float
    ) -> None:
        super().__init__(cp_id, websocket, response_timeout=response_timeout, logger=wire_log)
        self._session = session

    @handles(enums16.Action.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        return result16.BootNotification(
            current_time=_now_iso(self._session),
            interval=self._session.central.heartbeat_interval_s,
            status=enums16.RegistrationStatus.accepted,
        )

    @handles(enums16.Action.heartbeat)
    def on_heartbeat(self) -> Any:
        return result16.Heartbeat(current_time=_now_iso(self._session))

    @handles(enums16.Action.status_notification)
    def on_status(self, connector_id: int, status: str, **_: Any) -> Any:
        if connector_id in (0, self._session.station.connection.connector_id):
            self._session.status(status)
        return result16.StatusNotification()

    @handles(enums16.Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], **_: Any) -> Any:
        self._session.meter_values(connector_id, meter_value)
        return result16.MeterValues()

    @handles(enums16.Action.authorize)
    def on_authorize(self, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": enums16.AuthorizationStatus.accepted})

    @handles(enums16.Action.start_transaction)
    def on_start_transaction(self, connector_id: int, **_: Any) -> Any:
        return result16.StartTransaction(
            transaction_id=random.randint(1, 2**31 - 1),
            id_tag_info={"status": enums16.AuthorizationStatus.accepted},
        )

    @handles(enums16.Action.stop_transaction)
    def on_stop_transaction(self, **kwargs: Any) -> Any:
        if "transaction_data" in kwargs:
            self._session.meter_values(0, kwargs["transaction_data"])
        return result16.StopTransaction()


class _Station201(_RoutingMixin, ChargePoint201):  # type: ignore[misc]
    def __init__(
        self, cp_id: str, websocket: ServerConnection, session: _Session, response_timeout: float
    ) -> None:
        super().__init__(cp_id, websocket, response_timeout=response_timeout, logger=wire_log)
        self._session = session

    @handles(enums201.Action.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        return result201.BootNotification(
            current_time=_now_iso(self._session),
            interval=self._session.central.heartbeat_interval_s,
            status=enums201.RegistrationStatusEnumType.accepted,
        )

    @handles(enums201.Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=_now_iso(self._session))

    @handles(enums201.Action.status_notification)
    def on_status(self, evse_id: int, connector_status: str, **_: Any) -> Any:
        if evse_id in (0, self._session.station.connection.connector_id):
            self._session.status(connector_status)
        return result201.StatusNotification()

    @handles(enums201.Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[Any], **_: Any) -> Any:
        self._session.meter_values(evse_id, meter_value)
        return result201.MeterValues()

    @handles(enums201.Action.transaction_event)
    def on_transaction_event(self, meter_value: list[Any] | None = None, **kwargs: Any) -> Any:
        if meter_value:
            evse = kwargs.get("evse") or {}
            self._session.meter_values(evse.get("id", 0), meter_value)
        return result201.TransactionEvent()

    @handles(enums201.Action.authorize)
    def on_authorize(self, **_: Any) -> Any:
        return result201.Authorize(
            id_token_info={"status": enums201.AuthorizationStatusEnumType.accepted}
        )


# --- the central system ------------------------------------------------------------------------


class OcppCentralSystem(Adapter):
    """The engine's OCPP server: one websocket per charge point, telemetry in, profiles out."""

    def __init__(
        self,
        name: str,
        stations: Sequence[OcppStation],
        clock: Clock,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        heartbeat_interval_s: int = 60,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.host = host
        self.requested_port = port
        self.heartbeat_interval_s = heartbeat_interval_s
        self._by_cp: dict[str, OcppStation] = {}
        self._by_asset: dict[str, OcppStation] = {}
        for station in stations:
            cp_id = station.connection.charge_point_id
            if cp_id in self._by_cp or station.asset_id in self._by_asset:
                raise ValueError(f"{name}: charge point {cp_id!r} enrolled twice")
            self._by_cp[cp_id] = station
            self._by_asset[station.asset_id] = station
        self._sessions: dict[str, _Session] = {}
        self._sink: TelemetrySink | None = None
        self._server: Server | None = None
        self._listening = asyncio.Event()
        self._backoff = Backoff(rng=rng or random.Random())
        self._connections: dict[str, int] = {}
        self.last_error = ""
        self.last_message_at: datetime | None = None

    @property
    def asset_ids(self) -> frozenset[str]:
        return frozenset(self._by_asset)

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        if self._server is None:
            raise AdapterError(self.name, "the OCPP server is not listening")
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    async def wait_listening(self) -> int:
        await self._listening.wait()
        return self.port

    def connected(self, asset_id: str) -> bool:
        return asset_id in self._sessions

    # --- sink plumbing used by sessions -----------------------------------------------------

    def deliver(self, batch: list[Measurement]) -> None:
        assert self._sink is not None
        self.last_message_at = self.clock.now()
        self._sink.accept(self.name, batch)

    def bad_payload(self, reason: str, detail: str) -> None:
        if self._sink is not None:
            self._sink.reject(self.name, reason, detail)

    def availability(self, asset_id: str, available: bool) -> None:
        if self._sink is not None:
            self._sink.set_available(asset_id, available, self.clock.now())

    # --- server ------------------------------------------------------------------------------

    async def run(self, sink: TelemetrySink) -> None:
        self._sink = sink
        while True:
            try:
                async with serve(
                    self._serve_connection,
                    self.host,
                    self.requested_port,
                    subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS.values()],
                    select_subprotocol=self._select_subprotocol,
                    process_request=self._check_request,
                ) as server:
                    self._server = server
                    self._backoff.reset()
                    self._listening.set()
                    log.info("%s: OCPP central system on %s:%d", self.name, self.host, self.port)
                    await server.serve_forever()
            except OSError as err:
                self.last_error = f"{self.name}: cannot listen on {self.host}: {err}"
                log.warning("%s", self.last_error)
            finally:
                self._listening.clear()
                self._server = None
            await self.clock.sleep(self._backoff.next_delay())

    @staticmethod
    def _cp_id(path: str) -> str:
        return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = self._cp_id(request.path)
        if cp_id not in self._by_cp:
            self.bad_payload("unknown_asset", f"connection from unknown charge point {cp_id!r}")
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown charge point\n")
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        assert connection.request is not None
        station = self._by_cp.get(self._cp_id(connection.request.path))
        if station is None:
            return None
        wanted = Subprotocol(SUBPROTOCOLS[station.connection.version])
        # None lets the handshake finish; the handler then closes it with a reason
        return wanted if wanted in offered else None

    async def _serve_connection(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        station = self._by_cp[self._cp_id(websocket.request.path)]
        asset_id = station.asset_id
        if websocket.subprotocol != SUBPROTOCOLS[station.connection.version]:
            self.bad_payload(
                "wrong_version",
                f"{station.connection.charge_point_id} did not offer "
                f"{SUBPROTOCOLS[station.connection.version]}",
            )
            await websocket.close(1002, "subprotocol required")
            return
        previous = self._sessions.get(asset_id)
        if previous is not None:  # the station reconnected before its old socket timed out
            await previous.websocket.close(1001, "replaced by a new connection")
        session = _Session(self, station, websocket, station.connection.version)
        self._sessions[asset_id] = session
        count = self._connections.get(asset_id, 0)
        self._connections[asset_id] = count + 1
        log.info("%s: %s connected (%s)", self.name, asset_id, websocket.subprotocol)
        self.availability(asset_id, True)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(session), name=f"{self.name}:{asset_id}:read")
                group.create_task(session.outbox_loop(), name=f"{self.name}:{asset_id}:outbox")
        except* ConnectionClosed:
            pass
        finally:
            session.fail_pending()
            if self._sessions.get(asset_id) is session:
                del self._sessions[asset_id]
                self.availability(asset_id, False)
            log.info("%s: %s disconnected", self.name, asset_id)

    async def _read(self, session: _Session) -> None:
        await session.point.start()  # returns only by raising ConnectionClosed

    # --- setpoints ---------------------------------------------------------------------------

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        def ack(accepted: bool, reason: str = "", applied: float | None = None) -> SetpointAck:
            return SetpointAck(
                setpoint.correlation_id,
                setpoint.asset_id,
                accepted=accepted,
                at=self.clock.now(),
                applied_power_kw=applied,
                reason=reason,
            )

        station = self._by_asset.get(setpoint.asset_id)
        if station is None:
            return ack(False, "unknown_asset")
        if setpoint.expired(self.clock.now()):
            return ack(False, "expired")
        session = self._sessions.get(setpoint.asset_id)
        if session is None:
            return ack(False, "disconnected")
        payload, limit_kw = charging_profile_call(setpoint, station.connection)
        future: asyncio.Future[_CallOutcome] = asyncio.get_running_loop().create_future()
        try:
            session.outbox.put_nowait((payload, future))
        except asyncio.QueueFull:
            return ack(False, "busy")
        try:
            # the outbox applies the call timeout; this bound also covers the queue wait
            async with asyncio.timeout(2 * station.connection.timeout_s):
                outcome = await future
        except TimeoutError:
            future.cancel()
            return ack(False, "timeout")
        if outcome.status is None:
            return ack(False, outcome.reason)
        if outcome.status == "Accepted":
            return ack(True, applied=limit_kw)
        return ack(False, outcome.status.lower())

    def health(self) -> AdapterHealth:
        if self._server is None:
            state = ConnectionState.DISCONNECTED
        elif len(self._sessions) == len(self._by_asset):
            state = ConnectionState.CONNECTED
        else:
            state = ConnectionState.CONNECTING
        return AdapterHealth(
            name=self.name,
            state=state,
            reconnects=sum(max(n - 1, 0) for n in self._connections.values()),
            last_error=self.last_error,
            last_message_at=self.last_message_at,
        )
