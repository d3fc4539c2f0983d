"""JSON payloads shared by the MQTT and HTTP adapters: telemetry, setpoints, acks, status.

The wire format is documented in docs/mqtt.md. Decoding telemetry is the engine's hot path
(hundreds of thousands of readings a second), so the decoders are written by hand over the
stdlib `json` module and check types with `type(x) is ...`; the pydantic models at the bottom
are the same schema stated declaratively, used for the JSON Schema in the docs and to test
that the fast decoders accept exactly what the schema accepts.

Every decoder raises `PayloadError(reason, message)`; `reason` is one of `REASONS`, a short
metric label. Batches are decoded reading by reading: a bad reading is reported and skipped,
the good ones of the same message are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import PayloadError

SCHEMA_VERSION = 1

Raw = bytes | bytearray | str

MALFORMED_JSON = "malformed_json"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
BAD_VALUE = "bad_value"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_TOPIC = "unknown_topic"
UNSUPPORTED_VERSION = "unsupported_version"
REASONS = (
    MALFORMED_JSON,
    WRONG_TYPE,
    MISSING_FIELD,
    BAD_VALUE,
    BAD_TIMESTAMP,
    UNKNOWN_TOPIC,
    UNSUPPORTED_VERSION,
)

# Epoch seconds outside [2000-01-01, 2100-01-01) are a unit mistake (ms, µs), not a time.
MIN_EPOCH_S = 946_684_800.0
MAX_EPOCH_S = 4_102_444_800.0


def _reject_constant(name: str) -> float:
    # The stdlib parser accepts NaN and Infinity by default; JSON does not.
    raise ValueError(f"{name} is not a JSON number")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_decode_json: Callable[[str], Any] = _decoder.decode
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_encode_json: Callable[[Any], str] = _encoder.encode


def load_json(raw: Raw) -> Any:
    """Parse a JSON document; malformed text, bad UTF-8 and NaN/Infinity are `malformed_json`."""
    try:
        text = raw.decode() if isinstance(raw, bytes | bytearray) else raw
        return _decode_json(text)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise PayloadError(MALFORMED_JSON, f"not JSON: {err}") from None


def dump_json(value: Any) -> bytes:
    return _encode_json(value).encode()


# --- values ---------------------------------------------------------------------------------


def parse_timestamp(value: object, field: str = "ts") -> datetime:
    """Epoch seconds (a number) or an ISO 8601 string with an offset, as an aware UTC datetime."""
    kind = type(value)
    if kind is float or kind is int:
        seconds = float(value)  # type: ignore[arg-type]
        if not MIN_EPOCH_S <= seconds < MAX_EPOCH_S:
            raise PayloadError(BAD_TIMESTAMP, f"{field} {value!r} is not epoch seconds")
        return datetime.fromtimestamp(seconds, UTC)
    if kind is str:
        try:
            moment = datetime.fromisoformat(value)  # type: ignore[arg-type]
        except ValueError:
            raise PayloadError(BAD_TIMESTAMP, f"{field} {value!r} is not ISO 8601") from None
        if moment.tzinfo is None:
            raise PayloadError(BAD_TIMESTAMP, f"{field} {value!r} has no UTC offset")
        return moment
    raise PayloadError(WRONG_TYPE, f"{field} must be a number or a string, not {kind.__name__}")


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: object, field: str) -> float:
    kind = type(value)
    if kind is float:
        return value  # type: ignore[return-value]  # finite: NaN/Infinity never parse
    if kind is int:
        return float(value)  # type: ignore[arg-type]
    raise PayloadError(WRONG_TYPE, f"{field} must be a number, not {kind.__name__}")


def _string(value: object, field: str) -> str:
    if type(value) is not str or not value:
        raise PayloadError(WRONG_TYPE, f"{field} must be a non-empty string")
    return value


def _object(value: object, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise PayloadError(WRONG_TYPE, f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _version(payload: dict[str, Any]) -> None:
    version = payload.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or type(version) is not int:
        raise PayloadError(UNSUPPORTED_VERSION, f"payload version {version!r} is not supported")


# --- telemetry ------------------------------------------------------------------------------


class _Timestamps:
    """Parses timestamps, reusing the last result: readings of one batch share theirs."""

    __slots__ = ("_last_raw", "_last_value")

    def __init__(self) -> None:
        self._last_raw: object = None
        self._last_value: datetime | None = None

    def parse(self, raw: object) -> datetime:
        if raw == self._last_raw and type(raw) is type(self._last_raw):
            assert self._last_value is not None
            return self._last_value
        value = parse_timestamp(raw)
        self._last_raw = raw
        self._last_value = value
        return value


def _reading(
    r: dict[str, Any], asset_id: str, default_ts: object, stamps: _Timestamps
) -> Measurement:
    """One reading object (device telemetry or a batch entry) as a Measurement."""
    power = r.get("power_kw")
    if type(power) is not float:
        if power is None:
            raise PayloadError(MISSING_FIELD, f"reading of {asset_id!r} has no power_kw")
        power = _number(power, "power_kw")
    ts = r.get("ts", default_ts)
    if ts is None:
        raise PayloadError(MISSING_FIELD, f"reading of {asset_id!r} has no ts")
    soc = r.get("soc")
    if soc is not None and type(soc) is not float:
        soc = _number(soc, "soc")
    temperature = r.get("temperature_c")
    if temperature is not None and type(temperature) is not float:
        temperature = _number(temperature, "temperature_c")
    energy = r.get("energy_kwh")
    if energy is not None and type(energy) is not float:
        energy = _number(energy, "energy_kwh")
    available = r.get("available", True)
    if available is not True and available is not False:
        raise PayloadError(WRONG_TYPE, "available must be true or false")
    return Measurement(asset_id, stamps.parse(ts), power, soc, temperature, energy, available)


def decode_telemetry(raw: Raw, asset_id: str) -> Measurement:
    """A device's own telemetry message: one reading of the asset its topic names."""
    payload = _object(load_json(raw), "telemetry")
    if "v" in payload:
        _version(payload)
    return _reading(payload, asset_id, None, _Timestamps())


@dataclass(slots=True)
class BatchResult:
    """A decoded batch: the good readings and, per bad one, its reason and detail."""

    measurements: list[Measurement]
    errors: list[tuple[str, str]]


def decode_batch(
    raw: Raw,
    resolve: Mapping[str, str] | None = None,
    *,
    stamps: _Timestamps | None = None,
) -> BatchResult:
    """A gateway's batch: `{"ts": ..., "readings": [{"id": ..., "power_kw": ...}, ...]}`.

    `resolve` maps the gateway's device ids to asset ids; ids it does not know pass through
    unchanged (the fleet rejects unknown assets). A whole-message problem raises PayloadError;
    a bad reading is listed in `errors` and the rest are kept.
    """
    payload = load_json(raw)
    if type(payload) is list:  # a bare list of readings is accepted: the HTTP poll shape
        readings: object = payload
        default_ts: object = None
    else:
        payload = _object(payload, "batch")
        if "v" in payload:
            _version(payload)
        readings = payload.get("readings")
        if readings is None:
            raise PayloadError(MISSING_FIELD, "batch has no readings")
        if type(readings) is not list:
            raise PayloadError(WRONG_TYPE, "readings must be a list")
        default_ts = payload.get("ts")
    timestamps = stamps if stamps is not None else _Timestamps()
    lookup = resolve.get if resolve is not None else None
    out: list[Measurement] = []
    errors: list[tuple[str, str]] = []
    append = out.append
    items: list[Any] = readings  # type: ignore[assignment]
    for index, r in enumerate(items):
        try:
            if type(r) is not dict:
                raise PayloadError(WRONG_TYPE, "a reading must be a JSON object")
            device = r.get("id")
            if type(device) is not str or not device:
                if device is None:
                    raise PayloadError(MISSING_FIELD, "reading has no id")
                raise PayloadError(WRONG_TYPE, "reading id must be a non-empty string")
            asset_id = lookup(device, device) if lookup is not None else device
            append(_reading(r, asset_id, default_ts, timestamps))
        except PayloadError as err:
            errors.append((err.reason, f"reading {index}: {err}"))
    return BatchResult(out, errors)


def reading_dict(
    m: Measurement, device_id: str | None = None, *, with_ts: bool = True
) -> dict[str, Any]:
    """A measurement as a reading object; `device_id` is set for batch entries."""
    r: dict[str, Any] = {}
    if device_id is not None:
        r["id"] = device_id
    if with_ts:
        r["ts"] = round(m.timestamp.timestamp(), 3)
    r["power_kw"] = m.power_kw
    if m.soc_fraction is not None:
        r["soc"] = m.soc_fraction
    if m.temperature_c is not None:
        r["temperature_c"] = m.temperature_c
    if m.energy_kwh is not None:
        r["energy_kwh"] = m.energy_kwh
    if not m.available:
        r["available"] = False
    return r


def encode_telemetry(m: Measurement) -> bytes:
    return dump_json(reading_dict(m))


def encode_batch(readings: Iterable[tuple[str, Measurement]], at: datetime | None = None) -> bytes:
    """A batch of (device id, measurement); readings stamped `at` share the batch's ts."""
    shared = round(at.timestamp(), 3) if at is not None else None
    entries = []
    for device_id, m in readings:
        entry = reading_dict(m, device_id)
        if entry["ts"] == shared:
            del entry["ts"]
        entries.append(entry)
    batch: dict[str, Any] = {"v": SCHEMA_VERSION}
    if shared is not None:
        batch["ts"] = shared
    batch["readings"] = entries
    return dump_json(batch)


# --- setpoints and acks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetpointMessage:
    """A setpoint as a device reads it: its correlation id, device id and where to answer."""

    correlation_id: str
    device_id: str
    power_kw: float
    issued_at: datetime
    valid_until: datetime
    reply_to: str | None = None


def encode_setpoint(setpoint: Setpoint, device_id: str, reply_to: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": setpoint.correlation_id,
        "device": device_id,
        "power_kw": setpoint.power_kw,
        "issued_at": format_timestamp(setpoint.issued_at),
        "valid_until": format_timestamp(setpoint.valid_until),
    }
    if reply_to is not None:
        body["reply_to"] = reply_to
    return dump_json(body)


def decode_setpoint(raw: Raw) -> SetpointMessage:
    payload = _object(load_json(raw), "setpoint")
    _version(payload)
    try:
        correlation_id = payload["id"]
        device_id = payload["device"]
        power = payload["power_kw"]
        issued = payload["issued_at"]
        valid_until = payload["valid_until"]
    except KeyError as err:
        raise PayloadError(MISSING_FIELD, f"setpoint has no {err.args[0]}") from None
    reply_to = payload.get("reply_to")
    if reply_to is not None:
        reply_to = _string(reply_to, "reply_to")
    return SetpointMessage(
        correlation_id=_string(correlation_id, "id"),
        device_id=_string(device_id, "device"),
        power_kw=_number(power, "power_kw"),
        issued_at=parse_timestamp(issued, "issued_at"),
        valid_until=parse_timestamp(valid_until, "valid_until"),
        reply_to=reply_to,
    )


def encode_ack(ack: SetpointAck, device_id: str) -> bytes:
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": ack.correlation_id,
        "device": device_id,
        "accepted": ack.accepted,
        "at": format_timestamp(ack.at),
    }
    if ack.applied_power_kw is not None:
        body["applied_power_kw"] = ack.applied_power_kw
    if ack.reason:
        body["reason"] = ack.reason
    return dump_json(body)


@dataclass(frozen=True, slots=True)
class AckMessage:
    """An ack as it arrives: the device id still has to be mapped to an asset id."""

    correlation_id: str
    device_id: str
    accepted: bool
    at: datetime
    applied_power_kw: float | None
    reason: str

    def to_ack(self, asset_id: str) -> SetpointAck:
        return SetpointAck(
            correlation_id=self.correlation_id,
            asset_id=asset_id,
            accepted=self.accepted,
            at=self.at,
            applied_power_kw=self.applied_power_kw,
            reason=self.reason,
        )


def decode_ack(raw: Raw) -> AckMessage:
    payload = _object(load_json(raw), "ack")
    _version(payload)
    try:
        correlation_id = payload["id"]
        accepted = payload["accepted"]
        at = payload["at"]
    except KeyError as err:
        raise PayloadError(MISSING_FIELD, f"ack has no {err.args[0]}") from None
    if accepted is not True and accepted is not False:
        raise PayloadError(WRONG_TYPE, "accepted must be true or false")
    applied = payload.get("applied_power_kw")
    reason = payload.get("reason", "")
    if type(reason) is not str:
        raise PayloadError(WRONG_TYPE, "reason must be a string")
    device = payload.get("device", "")
    if type(device) is not str:
        raise PayloadError(WRONG_TYPE, "device must be a string")
    return AckMessage(
        correlation_id=_string(correlation_id, "id"),
        device_id=device,
        accepted=accepted,
        at=parse_timestamp(at, "at"),
        applied_power_kw=None if applied is None else _number(applied, "applied_power_kw"),
        reason=reason,
    )


# --- availability -----------------------------------------------------------------------------

ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StatusMessage:
    online: bool
    at: datetime | None


def encode_status(online: bool, at: datetime | None = None) -> bytes:
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "state": ONLINE if online else OFFLINE}
    if at is not None:
        body["at"] = format_timestamp(at)
    return dump_json(body)


def decode_status(raw: Raw) -> StatusMessage:
    """`{"state": "online"|"offline", "at": ...}`, or the bare words for simple devices."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes | bytearray) else raw
    word = text.strip()
    if word in (ONLINE, OFFLINE):
        return StatusMessage(word == ONLINE, None)
    payload = _object(load_json(raw), "status")
    _version(payload)
    state = payload.get("state")
    if state is None:
        raise PayloadError(MISSING_FIELD, "status has no state")
    if state not in (ONLINE, OFFLINE):
        raise PayloadError(BAD_VALUE, f"status state {state!r} is not online or offline")
    at = payload.get("at")
    return StatusMessage(state == ONLINE, None if at is None else parse_timestamp(at, "at"))


# --- the schema, stated declaratively -----------------------------------------------------------
# These models are not on the hot path: they give the JSON Schema of docs/mqtt.md and let the
# tests check that the decoders above accept exactly the payloads these models accept.


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


Number = StrictFloat | StrictInt
Timestamp = Annotated[
    Number | StrictStr,
    Field(description="epoch seconds, or ISO 8601 with a UTC offset"),
]


class ReadingSchema(_Payload):
    """One reading; `id` is required inside a batch, absent in a device's own message."""

    id: Annotated[StrictStr, Field(min_length=1)] | None = None
    ts: Timestamp | None = None
    power_kw: Number = Field(description="positive = drawn from the grid")
    soc: Number | None = Field(default=None, description="state of charge, 0..1")
    temperature_c: Number | None = None
    energy_kwh: Number | None = Field(default=None, description="cumulative meter reading")
    available: StrictBool = True


class BatchSchema(_Payload):
    v: Literal[1] = 1
    ts: Timestamp | None = Field(default=None, description="default for readings without ts")
    readings: list[ReadingSchema]


class SetpointSchema(_Payload):
    v: Literal[1] = 1
    id: StrictStr = Field(min_length=1, description="correlation id, echoed in the ack")
    device: StrictStr = Field(min_length=1)
    power_kw: Number
    issued_at: Timestamp
    valid_until: Timestamp = Field(description="the device reverts to local control after it")
    reply_to: StrictStr | None = Field(default=None, description="ack topic (MQTT 3.1.1)")


class AckSchema(_Payload):
    v: Literal[1] = 1
    id: StrictStr = Field(min_length=1)
    device: StrictStr = ""
    accepted: StrictBool
    at: Timestamp
    applied_power_kw: Number | None = None
    reason: StrictStr = ""


class StatusSchema(_Payload):
    v: Literal[1] = 1
    state: Literal["online", "offline"]
    at: Timestamp | None = None


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every payload, by message class."""
    return {
        "telemetry": ReadingSchema.model_json_schema(),
        "batch": BatchSchema.model_json_schema(),
        "setpoint": SetpointSchema.model_json_schema(),
        "ack": AckSchema.model_json_schema(),
        "status": StatusSchema.model_json_schema(),
    }


def readings_for(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Reading objects with ids for a list of measurements (HTTP poll bodies, tests)."""
    return [reading_dict(m, m.asset_id) for m in measurements]
