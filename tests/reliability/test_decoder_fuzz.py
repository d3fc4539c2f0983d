"""Hostile payloads against every adapter's decoder: rejected with a reason, never a crash.

Property: whatever bytes or JSON shape arrives, a decoder either returns values that are all
finite or raises `PayloadError` with a short reason; nothing else escapes. Covered: the JSON
payloads of the MQTT and HTTP adapters (telemetry, batch, setpoint, ack, status), Modbus
register maps and SunSpec models (every point of models 1, 802 and 704), and OCPP 1.6 and
2.0.1 MeterValues down to the station's Measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import payloads, sunspec
from adapters.modbus import REGISTER_WIDTH, decode_register
from adapters.ocpp import USED_MEASURANDS, _StationTotals, decode_meter_value
from vpp.config.schema import ModbusRegister
from vpp.domain import Measurement
from vpp.errors import PayloadError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODBUS_REASONS = {"malformed", "nan_marker", "short_read", "not_implemented", "wrong_type"}
OCPP_REASONS = {
    "bad_timestamp",
    "naive_timestamp",
    "malformed",
    "wrong_type",
    "unsupported_format",
    "unsupported_unit",
    "no_power",
}

# --- strategies ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually (3 in 4) a well-formed value, else a hostile one: deep paths get exercised too."""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 3 else good)


def shaped(
    fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the `required` fields, any subset of the others, and stray extra keys."""
    body = st.fixed_dictionaries(
        {k: fields[k] for k in required},
        optional={k: v for k, v in fields.items() if k not in required},
    )
    extra = st.dictionaries(st.text(max_size=6), json_values, max_size=2)
    return st.tuples(extra, body).map(lambda pair: {**pair[0], **pair[1]})


timestamps = mostly(
    st.floats(min_value=1.6e9, max_value=2.0e9) | st.integers(1_600_000_000, 2_000_000_000),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
    | st.integers(min_value=-(2**1100), max_value=2**1100)
    | st.sampled_from(["2026-07-15T10:00:00+08:00", "2026-07-15T10:00:00", "yesterday", ""])
    | json_values,
)
numbers = mostly(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**1100), max_value=2**1100)  # beyond the float range
    | json_values,
)
reading_fields: dict[str, st.SearchStrategy[Any]] = {
    "ts": timestamps,
    "power_kw": numbers,
    "soc": numbers,
    "temperature_c": numbers,
    "energy_kwh": numbers,
    "available": mostly(st.booleans(), json_values),
    "v": st.sampled_from([1, 2, "1", True]) | json_values,
}
readings = mostly(shaped(reading_fields, ("ts", "power_kw")), shaped(reading_fields))
batch_fields = {**reading_fields, "id": mostly(st.sampled_from(["dg1", "x"]), json_values)}
batch_readings = mostly(
    shaped(batch_fields, ("id", "power_kw")), shaped(batch_fields) | json_values
)
batch_fields_outer: dict[str, st.SearchStrategy[Any]] = {
    "v": mostly(st.just(1), json_values),
    "ts": timestamps,
    "readings": mostly(st.lists(batch_readings, max_size=5), json_values),
}
batches = mostly(shaped(batch_fields_outer, ("readings",)), shaped(batch_fields_outer)) | st.lists(
    batch_readings, max_size=4
)
texts = mostly(st.text(min_size=1, max_size=5), json_values)
setpoint_fields: dict[str, st.SearchStrategy[Any]] = {
    "v": mostly(st.just(1), json_values),
    "id": texts,
    "device": texts,
    "power_kw": numbers,
    "issued_at": timestamps,
    "valid_until": timestamps,
    "reply_to": texts,
}
setpoints = mostly(
    shaped(setpoint_fields, ("v", "id", "device", "power_kw", "issued_at", "valid_until")),
    shaped(setpoint_fields),
)
ack_fields: dict[str, st.SearchStrategy[Any]] = {
    "v": mostly(st.just(1), json_values),
    "id": texts,
    "device": texts,
    "accepted": mostly(st.booleans(), json_values),
    "at": timestamps,
    "applied_power_kw": numbers,
    "reason": texts,
}
acks = mostly(shaped(ack_fields, ("v", "id", "accepted", "at")), shaped(ack_fields))
status_fields: dict[str, st.SearchStrategy[Any]] = {
    "v": mostly(st.just(1), json_values),
    "state": mostly(st.sampled_from(["online", "offline"]), st.just("sleeping") | json_values),
    "at": timestamps,
}
statuses = mostly(shaped(status_fields, ("state",)), shaped(status_fields))


def encode(value: Any) -> bytes:
    # Python's json writes integers of any size: huge ones must still be refused
    return json.dumps(value).encode()


raw_payloads = (
    st.binary(max_size=200)
    | st.text(max_size=100).map(str.encode)
    | json_values.map(encode)
    | st.sampled_from(
        [
            b'{"ts": 1.8e9, "power_kw": NaN}',
            b'{"ts": 1.8e9, "power_kw": Infinity}',
            b'{"ts": 1.8e9, "power_kw": 1e999}',
            b'{"ts": 1.8e9, "power_kw": -1e999}',
            b'{"ts": 1e999, "power_kw": 1}',
            b'{"ts": 1.8e9, "power_kw": 1, "soc": 1e400}',
            b'{"ts": 1.8e9, "power_kw": 1, "energy_kwh": 1e400}',
            b'{"readings": [{"id": "a", "ts": 1.8e9, "power_kw": 1e309}]}',
            b'{"ts": 1.8e9, "readings": [{"id": "a", "power_kw": 1.0, "energy_kwh": -1e309}]}',
            b"\xff\xfe{}",
            b"[" * 5000,
            b'{"a":' * 3000,
        ]
    )
)


def assert_finite(m: Measurement) -> None:
    assert isinstance(m, Measurement)
    for value in (m.power_kw, m.soc_fraction, m.temperature_c, m.energy_kwh):
        assert value is None or (isinstance(value, float) and math.isfinite(value)), m
    assert m.timestamp.tzinfo is not None


T = TypeVar("T")


def outcome(decode: Callable[[], T]) -> tuple[T | None, str | None]:
    """(result, None), or (None, reason) when the decoder rejected the input."""
    try:
        return decode(), None
    except PayloadError as err:
        return None, err.reason


# --- MQTT / HTTP JSON payloads ------------------------------------------------------------------


@FUZZ
@given(raw=raw_payloads | readings.map(encode))
def test_telemetry_decoder_returns_finite_readings_or_a_reason(raw: bytes) -> None:
    measurement, reason = outcome(lambda: payloads.decode_telemetry(raw, "bat-a"))
    if measurement is None:
        assert reason in payloads.REASONS
        return
    assert_finite(measurement)
    assert measurement.asset_id == "bat-a"


@FUZZ
@given(raw=raw_payloads | batches.map(encode))
def test_batch_decoder_keeps_good_readings_and_names_bad_ones(raw: bytes) -> None:
    result, reason = outcome(lambda: payloads.decode_batch(raw, {"dg1": "gen-a"}))
    if result is None:
        assert reason in payloads.REASONS
        return
    for m in result.measurements:
        assert_finite(m)
    assert all(reason in payloads.REASONS for reason, _ in result.errors)


@FUZZ
@given(raw=raw_payloads | setpoints.map(encode))
def test_setpoint_decoder_never_yields_a_non_finite_command(raw: bytes) -> None:
    message, reason = outcome(lambda: payloads.decode_setpoint(raw))
    if message is None:
        assert reason in payloads.REASONS
        return
    assert math.isfinite(message.power_kw)
    assert message.correlation_id and message.device_id
    assert message.issued_at.tzinfo is not None and message.valid_until.tzinfo is not None


@FUZZ
@given(raw=raw_payloads | acks.map(encode))
def test_ack_decoder_never_yields_a_non_finite_power(raw: bytes) -> None:
    message, reason = outcome(lambda: payloads.decode_ack(raw))
    if message is None:
        assert reason in payloads.REASONS
        return
    assert message.applied_power_kw is None or math.isfinite(message.applied_power_kw)
    assert isinstance(message.accepted, bool)


@FUZZ
@given(raw=raw_payloads | statuses.map(encode))
def test_status_decoder_says_online_or_offline_or_rejects(raw: bytes) -> None:
    status, reason = outcome(lambda: payloads.decode_status(raw))
    if status is None:
        assert reason in payloads.REASONS
        return
    assert isinstance(status.online, bool)


# --- Modbus register maps and SunSpec models ----------------------------------------------------

registers = st.builds(
    ModbusRegister,
    name=st.sampled_from(["power", "soc", "temperature", "available"]),
    address=st.integers(0, 65535),
    type=st.sampled_from(sorted(REGISTER_WIDTH)),
    scale=st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e-300, 1e300]),
    byte_order=st.sampled_from(["big", "little"]),
    word_order=st.sampled_from(["big", "little"]),
)


@FUZZ
@given(register=registers, words=st.lists(st.integers(-(2**20), 2**20), max_size=3))
def test_register_map_decoding_is_finite_or_rejected(
    register: ModbusRegister, words: list[int]
) -> None:
    value, reason = outcome(lambda: decode_register(words, register))
    if value is None:
        assert reason in MODBUS_REASONS
        return
    assert isinstance(value, float) and math.isfinite(value)


@FUZZ
@given(register=registers, data=st.data())
def test_register_map_decoding_of_well_sized_words(
    register: ModbusRegister, data: st.DataObject
) -> None:
    words = data.draw(
        st.lists(
            st.integers(0, 0xFFFF) | st.sampled_from([0x7FC0, 0x7F80, 0xFF80, 0x8000, 0xFFFF]),
            min_size=REGISTER_WIDTH[register.type],
            max_size=REGISTER_WIDTH[register.type],
        )
    )
    value, reason = outcome(lambda: decode_register(words, register))
    if value is None:
        assert reason in MODBUS_REASONS
        return
    assert math.isfinite(value)


SUNSPEC_MODELS = [sunspec.COMMON_MODEL, sunspec.BATTERY_MODEL, sunspec.DER_CONTROLS_MODEL]


@FUZZ
@given(
    model_id=st.sampled_from(SUNSPEC_MODELS),
    data=st.data(),
)
def test_every_sunspec_point_decodes_to_a_finite_value_none_or_a_reason(
    model_id: int, data: st.DataObject
) -> None:
    layout = sunspec.layout(model_id)
    size = layout.length + sunspec.HEADER_REGISTERS
    words = data.draw(
        st.lists(
            st.integers(0, 0xFFFF) | st.sampled_from([0x8000, 0xFFFF, 0x7FFF, 0x000B, 0xFFF5]),
            min_size=0,
            max_size=size,
        )
    )
    for name, point in layout.points.items():
        raw, reason = outcome(lambda point=point: sunspec.decode_raw(words, point))  # type: ignore[misc]
        if reason is not None:
            assert reason in {*MODBUS_REASONS, "unsupported_type"}, (name, reason)
            continue
        if isinstance(raw, float):
            assert math.isfinite(raw)
        if point.type in ("string", "pad"):
            continue
        scaled, reason = outcome(lambda name=name: sunspec.read_scaled(words, layout, name))  # type: ignore[misc]
        assert reason in {None, *MODBUS_REASONS}, (name, reason)
        assert scaled is None or math.isfinite(scaled)


# --- OCPP MeterValues ---------------------------------------------------------------------------

measurands = mostly(
    st.sampled_from([*sorted(USED_MEASURANDS), "Voltage", "Current.Import"]), json_values
)
sample_16_fields: dict[str, st.SearchStrategy[Any]] = {
    "value": mostly(
        st.sampled_from(["7400", "1e308", "-1e308", "nan", "inf", "12.5", "x"])
        | st.floats(allow_nan=False).map(repr),
        json_values,
    ),
    "measurand": measurands,
    "unit": mostly(st.sampled_from(["W", "kW", "Wh", "kWh", "Percent", "V"]), json_values),
    "phase": mostly(st.sampled_from(["L1", "L2", "L3", "N"]), json_values),
    "format": mostly(st.sampled_from(["Raw", "SignedData"]), json_values),
}
sampled_16 = mostly(shaped(sample_16_fields, ("value", "measurand")), shaped(sample_16_fields))
unit_of_measure = shaped(
    {
        "unit": mostly(st.sampled_from(["W", "kW", "Wh", "kWh", "Percent", "A"]), json_values),
        "multiplier": mostly(st.integers(-3, 3), st.integers(-400, 400) | json_values),
    }
)
sample_201_fields: dict[str, st.SearchStrategy[Any]] = {
    "value": mostly(
        st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e308, -1e308, 1e300]),
        json_values,
    ),
    "measurand": measurands,
    "unit_of_measure": mostly(unit_of_measure, json_values),
    "phase": mostly(st.sampled_from(["L1", "L2", "L3", "L1-N"]), json_values),
}
sampled_201 = mostly(shaped(sample_201_fields, ("value", "measurand")), shaped(sample_201_fields))
ocpp_timestamps = mostly(
    st.sampled_from(["2026-07-15T02:00:00+00:00", "2026-07-15T02:00:00Z"]),
    st.sampled_from(["2026-07-15T02:00:00", "now"]) | json_values,
)


def meter_values(sample: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    fields = {"timestamp": ocpp_timestamps, "sampled_value": st.lists(sample, max_size=5)}
    return mostly(
        shaped(fields, ("timestamp", "sampled_value")),
        shaped({**fields, "sampled_value": json_values}) | json_values,
    )


@FUZZ
@given(
    version=st.sampled_from(["1.6", "2.0.1"]),
    data=st.data(),
    connector=st.integers(0, 3),
)
def test_meter_values_become_finite_measurements_or_a_reason(
    version: str, data: st.DataObject, connector: int
) -> None:
    sample = sampled_16 if version == "1.6" else sampled_201
    values = data.draw(st.lists(meter_values(sample), min_size=1, max_size=3))
    totals = _StationTotals(connector_id=0)
    for meter_value in values:
        reading, reason = outcome(lambda mv=meter_value: decode_meter_value(mv, version))  # type: ignore[misc]
        if reading is None:
            assert reason in OCPP_REASONS, reason
            continue
        for value in (reading.power_w, reading.energy_wh, reading.soc_percent):
            assert value is None or math.isfinite(value)
        if totals.update(connector, reading):
            at = reading.timestamp
            measurement, reason = outcome(lambda at=at: totals.measurement("ev-a", at))  # type: ignore[misc]
            if measurement is None:
                assert reason == "no_power"
            else:
                assert_finite(measurement)
