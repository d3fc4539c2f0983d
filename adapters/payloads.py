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

import dataclasses
import json
import operator
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
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
    except RecursionError:  # nesting deeper than the parser's stack: hostile, not data
        raise PayloadError(MALFORMED_JSON, "not JSON: nested too deeply") from None


def dump_json(value: Any) -> bytes:
    return _encode_json(value).encode()


# --- values ---------------------------------------------------------------------------------


def parse_timestamp(value: object, field: str = "ts") -> datetime:
    """Epoch seconds (a number) or an ISO 8601 string with an offset, as an aware UTC datetime."""
    kind = type(value)
    if kind is float or kind is int:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer beyond any float
            seconds = MAX_EPOCH_S
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
        # NaN/Infinity never parse, but a literal beyond the float range (1e999) is inf
        if value - value == 0.0:  # type: ignore[operator]
            return value  # type: ignore[return-value]
        raise PayloadError(BAD_VALUE, f"{field} {value!r} is not a finite number")
    if kind is int:
        try:
            return float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise PayloadError(BAD_VALUE, f"{field} is beyond the float range") from None
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


def _slot_setters() -> tuple[Callable[[Measurement, Any], None], ...] | None:
    """Setters of `Measurement`'s slots in field order, to build one without its `__init__`.

    A frozen dataclass sets each field through `object.__setattr__`; ingest builds hundreds
    of thousands of readings a second and that is half of their construction. The slot
    descriptors set the same fields directly. None (use the constructor) unless Measurement
    is exactly the frozen slots dataclass with these fields and no `__post_init__`; a test
    compares the result with the constructor's.
    """
    expected = (
        "asset_id",
        "timestamp",
        "power_kw",
        "soc_fraction",
        "temperature_c",
        "energy_kwh",
        "available",
    )
    names = tuple(f.name for f in dataclasses.fields(Measurement))
    if names != expected or hasattr(Measurement, "__post_init__"):
        return None
    descriptors = [Measurement.__dict__.get(name) for name in names]
    if not all(type(d).__name__ == "member_descriptor" for d in descriptors):
        return None
    return tuple(d.__set__ for d in descriptors)  # type: ignore[union-attr]


_SETTERS = _slot_setters()


def new_measurement(
    asset_id: str,
    timestamp: datetime,
    power_kw: float,
    soc_fraction: float | None = None,
    temperature_c: float | None = None,
    energy_kwh: float | None = None,
    available: bool = True,
) -> Measurement:
    """`Measurement(...)`, built through its slots when `_SETTERS` allows (see there)."""
    if _SETTERS is None:
        return Measurement(
            asset_id, timestamp, power_kw, soc_fraction, temperature_c, energy_kwh, available
        )
    s0, s1, s2, s3, s4, s5, s6 = _SETTERS
    m: Measurement = object.__new__(Measurement)
    s0(m, asset_id)
    s1(m, timestamp)
    s2(m, power_kw)
    s3(m, soc_fraction)
    s4(m, temperature_c)
    s5(m, energy_kwh)
    s6(m, available)
    return m


def _reading(
    r: dict[str, Any],
    asset_id: str,
    default_ts: object,
    parse: Callable[[object], datetime] = parse_timestamp,
) -> Measurement:
    """One reading object (device telemetry or a batch entry) as a Measurement.

    `parse` reads its timestamp (a batch passes a cache: its readings share theirs).
    """
    power = r.get("power_kw")
    if type(power) is not float or power - power != 0.0:  # (inf - inf is NaN)
        if power is None:
            raise PayloadError(MISSING_FIELD, f"reading of {asset_id!r} has no power_kw")
        power = _number(power, "power_kw")
    ts = r.get("ts")
    if ts is None:  # absent or null: the batch's
        ts = default_ts
        if ts is None:
            raise PayloadError(MISSING_FIELD, f"reading of {asset_id!r} has no ts")
    soc = r.get("soc")
    if soc is not None and (type(soc) is not float or soc - soc != 0.0):
        soc = _number(soc, "soc")
    temperature = r.get("temperature_c")
    if temperature is not None and (
        type(temperature) is not float or temperature - temperature != 0.0
    ):
        temperature = _number(temperature, "temperature_c")
    energy = r.get("energy_kwh")
    if energy is not None and (type(energy) is not float or energy - energy != 0.0):
        energy = _number(energy, "energy_kwh")
    available = r.get("available", True)
    if available is not True and available is not False:
        raise PayloadError(WRONG_TYPE, "available must be true or false")
    return new_measurement(asset_id, parse(ts), power, soc, temperature, energy, available)


def decode_telemetry(raw: Raw, asset_id: str) -> Measurement:
    """A device's own telemetry message: one reading of the asset its topic names."""
    payload = _object(load_json(raw), "telemetry")
    if "v" in payload:
        _version(payload)
    return _reading(payload, asset_id, None)


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
    out: list[Measurement] = []
    errors: list[tuple[str, str]] = []
    items: list[Any] = readings  # type: ignore[assignment]
    # The batch's own ts is parsed once; a bad one fails only the readings that use it.
    default_at: datetime | None = None
    default_error: PayloadError | None = None
    if default_ts is not None:
        try:
            default_at = timestamps.parse(default_ts)
        except PayloadError as err:
            default_error = err
    lookup = (resolve if resolve is not None else {}).get  # unknown ids pass unchanged
    if default_at is not None and _SETTERS is not None:
        uniform = _decode_uniform(items, lookup, default_at, _SETTERS)
        if uniform is not None:
            return BatchResult(uniform, errors)
    # The loop is the ingest hot path: the common reading (id, power_kw as a float, the
    # batch's ts, optional float soc / temperature / energy) is decoded inline with local
    # names and built through Measurement's slots; anything else goes through `_reading`,
    # which finds the reason. A reading of two keys (id and power_kw) or three (and soc)
    # needs no further lookups.
    append = out.append
    setters = _SETTERS
    if setters is not None:
        s0, s1, s2, s3, s4, s5, s6 = setters
    new = object.__new__
    parse = timestamps.parse
    for index, r in enumerate(items):
        try:
            if type(r) is not dict:
                raise PayloadError(WRONG_TYPE, "a reading must be a JSON object")
            get = r.get
            device = get("id")
            if type(device) is not str or not device:
                if device is None:
                    raise PayloadError(MISSING_FIELD, "reading has no id")
                raise PayloadError(WRONG_TYPE, "reading id must be a non-empty string")
            asset_id = lookup(device, device)
            power = get("power_kw")
            size = len(r)
            soc = get("soc") if size > 2 else None
            if size == 2 or (size == 3 and soc is not None):
                ts = temperature = energy = None
                available = True
            else:
                ts = get("ts")
                temperature = get("temperature_c")
                energy = get("energy_kwh")
                available = get("available", True)
            if (
                type(power) is float
                and power - power == 0.0  # finite: a literal like 1e999 parses as inf
                and (soc is None or (type(soc) is float and soc - soc == 0.0))
                and (
                    temperature is None
                    or (type(temperature) is float and temperature - temperature == 0.0)
                )
                and (energy is None or (type(energy) is float and energy - energy == 0.0))
                and (available is True or available is False)
            ):
                if ts is not None:
                    at = parse(ts)
                elif default_at is not None:
                    at = default_at
                elif default_error is not None:
                    raise PayloadError(default_error.reason, str(default_error))
                else:
                    raise PayloadError(MISSING_FIELD, f"reading of {asset_id!r} has no ts")
                if setters is None:
                    append(Measurement(asset_id, at, power, soc, temperature, energy, available))
                    continue
                m = new(Measurement)
                s0(m, asset_id)
                s1(m, at)
                s2(m, power)
                s3(m, soc)
                s4(m, temperature)
                s5(m, energy)
                s6(m, available)
                append(m)
            else:
                append(_reading(r, asset_id, default_ts, parse))
        except PayloadError as err:
            errors.append((err.reason, f"reading {index}: {err}"))
    return BatchResult(out, errors)


_ID_POWER = operator.itemgetter("id", "power_kw")
_ID_POWER_SOC = operator.itemgetter("id", "power_kw", "soc")


def _decode_uniform(
    items: list[Any],
    lookup: Callable[[str, str], str],
    at: datetime,
    setters: tuple[Callable[[Measurement, Any], None], ...],
) -> list[Measurement] | None:
    """The readings of a batch whose every reading is `{id, power_kw}` or `{id, power_kw, soc}`.

    That is what a gateway sends most: the keys, their types and the batch's ts are checked
    for all readings at once, and the Measurements built field by field across the batch,
    with `map` doing the iteration in C. None when any reading differs in shape or type:
    the caller then decodes reading by reading and finds the reason.
    """
    try:
        sizes = set(map(len, items))
    except TypeError:
        return None  # a reading that is a number, true/false or null
    getter: Callable[[Any], tuple[Any, ...]]
    if sizes == {2}:
        getter = _ID_POWER
    elif sizes == {3}:
        getter = _ID_POWER_SOC
    else:
        return None
    try:
        columns = list(zip(*map(getter, items), strict=True))
    except (KeyError, TypeError):
        return None  # a key missing, or a reading that is a list or a string
    ids = columns[0]
    if set(map(type, ids)) != {str} or "" in ids or set(map(type, columns[1])) != {float}:
        return None
    if len(columns) == 3 and set(map(type, columns[2])) != {float}:
        return None
    count = len(ids)
    made = list(map(object.__new__, repeat(Measurement, count)))
    s0, s1, s2, s3, s4, s5, s6 = setters
    consume: Callable[[Iterable[None]], None] = deque[None](
        maxlen=0
    ).extend  # runs a map for its effect, keeping nothing
    consume(map(s0, made, map(lookup, ids, ids)))
    consume(map(s1, made, repeat(at, count)))
    consume(map(s2, made, columns[1]))
    consume(map(s3, made, columns[2] if len(columns) == 3 else repeat(None, count)))
    consume(map(s4, made, repeat(None, count)))
    consume(map(s5, made, repeat(None, count)))
    consume(map(s6, made, repeat(True, count)))
    return made


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


def _setpoint_body(setpoint: Setpoint, device_id: str) -> dict[str, Any]:
    return {
        "id": setpoint.correlation_id,
        "device": device_id,
        "power_kw": setpoint.power_kw,
        "issued_at": format_timestamp(setpoint.issued_at),
        "valid_until": format_timestamp(setpoint.valid_until),
    }


def encode_setpoint(setpoint: Setpoint, device_id: str, reply_to: str | None = None) -> bytes:
    body: dict[str, Any] = {"v": SCHEMA_VERSION, **_setpoint_body(setpoint, device_id)}
    if reply_to is not None:
        body["reply_to"] = reply_to
    return dump_json(body)


def encode_setpoints(items: Sequence[tuple[Setpoint, str]], reply_to: str | None = None) -> bytes:
    """Several setpoints (setpoint, device id) for one gateway in one message.

    `issued_at` and `valid_until` are stated once at the top when the entries share them
    (the setpoints of one control cycle do); an entry that differs carries its own.
    """
    if not items:
        raise ValueError("encode_setpoints needs at least one setpoint")
    first = items[0][0]
    issued = format_timestamp(first.issued_at)
    valid_until = format_timestamp(first.valid_until)
    entries = []
    for setpoint, device_id in items:
        entry = _setpoint_body(setpoint, device_id)
        if entry["issued_at"] == issued:
            del entry["issued_at"]
        if entry["valid_until"] == valid_until:
            del entry["valid_until"]
        entries.append(entry)
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "issued_at": issued, "valid_until": valid_until}
    if reply_to is not None:
        body["reply_to"] = reply_to
    body["setpoints"] = entries
    return dump_json(body)


def _or_default(entry: dict[str, Any], defaults: dict[str, Any], key: str) -> Any:
    """An entry's value, or the batch's when the entry's is absent or null."""
    value = entry.get(key)
    return defaults.get(key) if value is None else value


def _setpoint_entry(
    entry: dict[str, Any], defaults: dict[str, Any], reply_to: str | None
) -> SetpointMessage:
    try:
        correlation_id = entry["id"]
        device_id = entry["device"]
        power = entry["power_kw"]
    except KeyError as err:
        raise PayloadError(MISSING_FIELD, f"setpoint has no {err.args[0]}") from None
    issued = _or_default(entry, defaults, "issued_at")
    valid_until = _or_default(entry, defaults, "valid_until")
    if issued is None:
        raise PayloadError(MISSING_FIELD, "setpoint has no issued_at")
    if valid_until is None:
        raise PayloadError(MISSING_FIELD, "setpoint has no valid_until")
    return SetpointMessage(
        correlation_id=_string(correlation_id, "id"),
        device_id=_string(device_id, "device"),
        power_kw=_number(power, "power_kw"),
        issued_at=parse_timestamp(issued, "issued_at"),
        valid_until=parse_timestamp(valid_until, "valid_until"),
        reply_to=reply_to,
    )


def _reply_to(payload: dict[str, Any]) -> str | None:
    reply_to = payload.get("reply_to")
    return None if reply_to is None else _string(reply_to, "reply_to")


def decode_setpoint(raw: Raw) -> SetpointMessage:
    """One setpoint (the single form of `.../set`)."""
    payload = _object(load_json(raw), "setpoint")
    _version(payload)
    return _setpoint_entry(payload, {}, _reply_to(payload))


@dataclass(slots=True)
class SetpointBatch:
    """The setpoints of one `.../set` message and, per bad entry, its reason and detail."""

    commands: list[SetpointMessage]
    errors: list[tuple[str, str]]
    batched: bool = False  # the message had the batched form (answer with a batched ack)


def decode_setpoints(raw: Raw) -> SetpointBatch:
    """A `.../set` message in either form: one setpoint, or `{"setpoints": [...]}`.

    A problem with the whole message raises PayloadError; a bad entry of a batch is listed
    in `errors` and the others are kept.
    """
    payload = _object(load_json(raw), "setpoint")
    _version(payload)
    reply_to = _reply_to(payload)
    entries = payload.get("setpoints")
    if entries is None:
        return SetpointBatch([_setpoint_entry(payload, {}, reply_to)], [])
    if type(entries) is not list:
        raise PayloadError(WRONG_TYPE, "setpoints must be a list")
    commands: list[SetpointMessage] = []
    errors: list[tuple[str, str]] = []
    for index, entry in enumerate(entries):
        try:
            commands.append(_setpoint_entry(_object(entry, "a setpoint"), payload, reply_to))
        except PayloadError as err:
            errors.append((err.reason, f"setpoint {index}: {err}"))
    return SetpointBatch(commands, errors, batched=True)


def _ack_body(ack: SetpointAck, device_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ack.correlation_id,
        "device": device_id,
        "accepted": ack.accepted,
        "at": format_timestamp(ack.at),
    }
    if ack.applied_power_kw is not None:
        body["applied_power_kw"] = ack.applied_power_kw
    if ack.reason:
        body["reason"] = ack.reason
    return body


def encode_ack(ack: SetpointAck, device_id: str) -> bytes:
    return dump_json({"v": SCHEMA_VERSION, **_ack_body(ack, device_id)})


def encode_acks(items: Sequence[tuple[SetpointAck, str]]) -> bytes:
    """Several acks (ack, device id) in one message; a shared `at` is stated once at the top."""
    if not items:
        raise ValueError("encode_acks needs at least one ack")
    at = format_timestamp(items[0][0].at)
    entries = []
    for ack, device_id in items:
        entry = _ack_body(ack, device_id)
        if entry["at"] == at:
            del entry["at"]
        entries.append(entry)
    return dump_json({"v": SCHEMA_VERSION, "at": at, "acks": entries})


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


def _ack_entry(entry: dict[str, Any], default_at: object) -> AckMessage:
    try:
        correlation_id = entry["id"]
        accepted = entry["accepted"]
    except KeyError as err:
        raise PayloadError(MISSING_FIELD, f"ack has no {err.args[0]}") from None
    at = entry.get("at")
    if at is None:  # absent or null: the batch's
        at = default_at
        if at is None:
            raise PayloadError(MISSING_FIELD, "ack has no at")
    if accepted is not True and accepted is not False:
        raise PayloadError(WRONG_TYPE, "accepted must be true or false")
    applied = entry.get("applied_power_kw")
    reason = entry.get("reason", "")
    if type(reason) is not str:
        raise PayloadError(WRONG_TYPE, "reason must be a string")
    device = entry.get("device", "")
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


def decode_ack(raw: Raw) -> AckMessage:
    """One ack (the single form of `.../ack`)."""
    payload = _object(load_json(raw), "ack")
    _version(payload)
    return _ack_entry(payload, None)


@dataclass(slots=True)
class AckBatch:
    """The acks of one `.../ack` message and, per bad entry, its reason and detail."""

    acks: list[AckMessage]
    errors: list[tuple[str, str]]


def decode_acks(raw: Raw) -> AckBatch:
    """An `.../ack` message in either form: one ack, or `{"acks": [...]}`.

    A problem with the whole message raises PayloadError; a bad entry of a batch is listed
    in `errors` and the others are kept.
    """
    payload = _object(load_json(raw), "ack")
    _version(payload)
    entries = payload.get("acks")
    if entries is None:
        return AckBatch([_ack_entry(payload, None)], [])
    if type(entries) is not list:
        raise PayloadError(WRONG_TYPE, "acks must be a list")
    default_at = payload.get("at")
    acks: list[AckMessage] = []
    errors: list[tuple[str, str]] = []
    for index, entry in enumerate(entries):
        try:
            acks.append(_ack_entry(_object(entry, "an ack"), default_at))
        except PayloadError as err:
            errors.append((err.reason, f"ack {index}: {err}"))
    return AckBatch(acks, errors)


# --- availability -----------------------------------------------------------------------------

ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A device's availability; `set_batch`: it accepts the batched form of `.../set`."""

    online: bool
    at: datetime | None
    set_batch: bool = False


def encode_status(online: bool, at: datetime | None = None, *, set_batch: bool = False) -> bytes:
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "state": ONLINE if online else OFFLINE}
    if at is not None:
        body["at"] = format_timestamp(at)
    if set_batch:
        body["set_batch"] = True
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
    set_batch = payload.get("set_batch", False)
    if set_batch is not True and set_batch is not False:
        raise PayloadError(WRONG_TYPE, "set_batch must be true or false")
    return StatusMessage(
        state == ONLINE, None if at is None else parse_timestamp(at, "at"), set_batch
    )


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


class SetpointEntrySchema(_Payload):
    """One setpoint of a batch; its times default to the batch's."""

    id: StrictStr = Field(min_length=1, description="correlation id, echoed in the ack")
    device: StrictStr = Field(min_length=1)
    power_kw: Number
    issued_at: Timestamp | None = None
    valid_until: Timestamp | None = None


class SetpointBatchSchema(_Payload):
    """Several setpoints for one gateway (sent only to endpoints whose status has set_batch)."""

    v: Literal[1] = 1
    issued_at: Timestamp | None = Field(default=None, description="default for the entries")
    valid_until: Timestamp | None = Field(default=None, description="default for the entries")
    reply_to: StrictStr | None = Field(default=None, description="ack topic (MQTT 3.1.1)")
    setpoints: list[SetpointEntrySchema]


class AckEntrySchema(_Payload):
    """One ack of a batch; its `at` defaults to the batch's."""

    id: StrictStr = Field(min_length=1)
    device: StrictStr = ""
    accepted: StrictBool
    at: Timestamp | None = None
    applied_power_kw: Number | None = None
    reason: StrictStr = ""


class AckBatchSchema(_Payload):
    """The acks of several setpoints (a gateway answering a batched setpoint message)."""

    v: Literal[1] = 1
    at: Timestamp | None = Field(default=None, description="default for the entries")
    acks: list[AckEntrySchema]


class StatusSchema(_Payload):
    v: Literal[1] = 1
    state: Literal["online", "offline"]
    at: Timestamp | None = None
    set_batch: StrictBool = Field(
        default=False, description="the device accepts the batched form of .../set"
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every payload, by message class."""
    return {
        "telemetry": ReadingSchema.model_json_schema(),
        "batch": BatchSchema.model_json_schema(),
        "setpoint": SetpointSchema.model_json_schema(),
        "setpoint_batch": SetpointBatchSchema.model_json_schema(),
        "ack": AckSchema.model_json_schema(),
        "ack_batch": AckBatchSchema.model_json_schema(),
        "status": StatusSchema.model_json_schema(),
    }


def readings_for(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Reading objects with ids for a list of measurements (HTTP poll bodies, tests)."""
    return [reading_dict(m, m.asset_id) for m in measurements]
