"""Wire payloads: round trips, every rejection reason, and the fast decoder against the schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters import payloads
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import PayloadError

NOW = datetime(2026, 3, 2, 8, 15, 30, 250000, tzinfo=UTC)


def reason_of(call: Any, *args: Any) -> str:
    with pytest.raises(PayloadError) as caught:
        call(*args)
    return caught.value.reason


def test_device_telemetry_round_trip() -> None:
    m = Measurement("bat-a", NOW, -120.5, 0.42, None, 1234.5, available=False)
    assert payloads.decode_telemetry(payloads.encode_telemetry(m), "bat-a") == m


def test_batch_round_trip_maps_device_ids_and_shares_the_timestamp() -> None:
    readings = [
        ("dg1", Measurement("gen-a", NOW, -300.0)),
        ("bat-b", Measurement("bat-b", NOW - timedelta(seconds=2), 50.0, soc_fraction=0.5)),
        ("cold", Measurement("cold-b", NOW, 80.0, temperature_c=-18.5)),
    ]
    raw = payloads.encode_batch(readings, at=NOW)
    body = json.loads(raw)
    assert body["ts"] == NOW.timestamp()
    assert "ts" not in body["readings"][0] and "ts" in body["readings"][1]
    result = payloads.decode_batch(raw, {"dg1": "gen-a", "cold": "cold-b"})
    assert result.errors == []
    assert result.measurements == [m for _, m in readings]


def test_a_bad_reading_is_reported_and_the_rest_of_the_batch_kept() -> None:
    raw = json.dumps(
        {
            "ts": NOW.timestamp(),
            "readings": [
                {"id": "a", "power_kw": 1},
                {"id": "b", "power_kw": "1"},
                7,
                {"power_kw": 2.0},
                {"id": "c", "power_kw": 3.5, "ts": "2026-03-02T08:15:31+08:00"},
                {"id": "d", "power_kw": 1.0, "available": "yes"},
            ],
        }
    )
    result = payloads.decode_batch(raw)
    assert [m.asset_id for m in result.measurements] == ["a", "c"]
    assert result.measurements[1].timestamp == datetime(
        2026, 3, 2, 0, 15, 31, tzinfo=UTC
    ).astimezone(timezone(timedelta(hours=8)))
    assert [reason for reason, _ in result.errors] == [
        payloads.WRONG_TYPE,
        payloads.WRONG_TYPE,
        payloads.MISSING_FIELD,
        payloads.WRONG_TYPE,
    ]
    assert result.errors[0][1].startswith("reading 1:")


def test_a_bare_list_is_a_batch_with_per_reading_timestamps() -> None:
    raw = json.dumps([{"id": "a", "ts": NOW.isoformat(), "power_kw": 5}])
    (m,) = payloads.decode_batch(raw).measurements
    assert (m.asset_id, m.timestamp, m.power_kw) == ("a", NOW, 5.0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", payloads.MALFORMED_JSON),
        (b'{"ts": 1772439330, "power_kw": NaN}', payloads.MALFORMED_JSON),
        (b'{"ts": 1772439330, "power_kw": Infinity}', payloads.MALFORMED_JSON),
        (b"\xff\xfe", payloads.MALFORMED_JSON),
        (b"[1, 2]", payloads.WRONG_TYPE),
        (b'{"ts": 1772439330}', payloads.MISSING_FIELD),
        (b'{"power_kw": 1}', payloads.MISSING_FIELD),
        (b'{"ts": 1772439330, "power_kw": true}', payloads.WRONG_TYPE),
        (b'{"ts": 1772439330, "power_kw": 1, "soc": "full"}', payloads.WRONG_TYPE),
        (b'{"ts": 1772439330000, "power_kw": 1}', payloads.BAD_TIMESTAMP),  # milliseconds
        (b'{"ts": "2026-03-02T08:15:30", "power_kw": 1}', payloads.BAD_TIMESTAMP),  # naive
        (b'{"ts": "yesterday", "power_kw": 1}', payloads.BAD_TIMESTAMP),
        (b'{"ts": [1], "power_kw": 1}', payloads.WRONG_TYPE),
        (b'{"v": 2, "ts": 1772439330, "power_kw": 1}', payloads.UNSUPPORTED_VERSION),
    ],
)
def test_device_telemetry_rejections(raw: bytes, reason: str) -> None:
    assert reason_of(payloads.decode_telemetry, raw, "a") == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ts": 1772439330}', payloads.MISSING_FIELD),
        (b'{"readings": {"id": "a"}}', payloads.WRONG_TYPE),
        (b'"readings"', payloads.WRONG_TYPE),
        (b'{"v": "1", "readings": []}', payloads.UNSUPPORTED_VERSION),
    ],
)
def test_whole_batch_rejections(raw: bytes, reason: str) -> None:
    assert reason_of(payloads.decode_batch, raw) == reason


def test_setpoint_and_ack_round_trip() -> None:
    setpoint = Setpoint("gen-a", -250.0, NOW, NOW + timedelta(seconds=10), "c-1")
    command = payloads.decode_setpoint(
        payloads.encode_setpoint(setpoint, "dg1", reply_to="vpp/e/gw/ack")
    )
    assert command == payloads.SetpointMessage(
        "c-1", "dg1", -250.0, NOW, NOW + timedelta(seconds=10), "vpp/e/gw/ack"
    )
    ack = SetpointAck("c-1", "gen-a", True, NOW, applied_power_kw=-240.0)
    message = payloads.decode_ack(payloads.encode_ack(ack, "dg1"))
    assert message.device_id == "dg1"
    assert message.to_ack("gen-a") == ack
    refused = SetpointAck("c-2", "gen-a", False, NOW, reason="local_override")
    assert payloads.decode_ack(payloads.encode_ack(refused, "dg1")).to_ack("gen-a") == refused


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"accepted": true, "at": 1772439330}', payloads.MISSING_FIELD),
        (b'{"id": "c", "accepted": 1, "at": 1772439330}', payloads.WRONG_TYPE),
        (b'{"id": "", "accepted": true, "at": 1772439330}', payloads.WRONG_TYPE),
        (b'{"id": "c", "accepted": true, "at": 1772439330, "reason": 5}', payloads.WRONG_TYPE),
        (b'{"id": "c", "accepted": true, "at": "soon"}', payloads.BAD_TIMESTAMP),
    ],
)
def test_ack_rejections(raw: bytes, reason: str) -> None:
    assert reason_of(payloads.decode_ack, raw) == reason


def test_status_in_json_and_bare_words() -> None:
    assert payloads.decode_status(payloads.encode_status(True, NOW)) == payloads.StatusMessage(
        True, NOW
    )
    assert payloads.decode_status(b"offline") == payloads.StatusMessage(False, None)
    assert payloads.decode_status(b" online\n").online
    assert reason_of(payloads.decode_status, b'{"state": "asleep"}') == payloads.BAD_VALUE
    assert reason_of(payloads.decode_status, b'{"at": 1772439330}') == payloads.MISSING_FIELD


def test_json_schemas_describe_every_message_class() -> None:
    schemas = payloads.json_schemas()
    assert set(schemas) == {"telemetry", "batch", "setpoint", "ack", "status"}
    assert schemas["telemetry"]["required"] == ["power_kw"]
    assert set(schemas["setpoint"]["required"]) == {
        "id",
        "device",
        "power_kw",
        "issued_at",
        "valid_until",
    }


# --- the fast decoder accepts exactly what the declarative schema accepts --------------------

values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(), max_size=1),
)
readings = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=4), st.integers(), st.none()),
        "power_kw": values,
        "soc": values,
        "temperature_c": values,
        "energy_kwh": values,
        "available": values,
        "extra": values,
    },
)


@settings(max_examples=400, deadline=None)
@given(readings)
def test_decoder_and_schema_agree_on_every_reading(reading: dict[str, Any]) -> None:
    raw = json.dumps({"ts": NOW.timestamp(), "readings": [reading]})
    result = payloads.decode_batch(raw)
    try:
        payloads.ReadingSchema.model_validate_json(json.dumps(reading))
        schema_ok = isinstance(reading.get("id"), str) and reading["id"] != ""
    except ValidationError:
        schema_ok = False
    assert (len(result.measurements) == 1) == schema_ok, result.errors
    if schema_ok:
        (m,) = result.measurements
        assert m.power_kw == float(reading["power_kw"])
        assert m.available is reading.get("available", True)
