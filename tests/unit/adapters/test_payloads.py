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


def test_the_batch_ts_is_the_default_and_a_bad_one_fails_only_its_readings() -> None:
    readings = [
        {"id": "a", "power_kw": 1.0},
        {"id": "b", "power_kw": 2.0, "ts": None},
        {"id": "c", "power_kw": 3.0, "ts": NOW.timestamp()},
    ]
    good = payloads.decode_batch(json.dumps({"ts": NOW.timestamp(), "readings": readings}))
    assert [(m.asset_id, m.timestamp) for m in good.measurements] == [
        ("a", NOW),
        ("b", NOW),
        ("c", NOW),
    ]
    bad = payloads.decode_batch(json.dumps({"ts": "yesterday", "readings": readings}))
    assert [m.asset_id for m in bad.measurements] == ["c"]
    assert [reason for reason, _ in bad.errors] == [payloads.BAD_TIMESTAMP] * 2
    missing = payloads.decode_batch(json.dumps({"readings": readings}))
    assert [reason for reason, _ in missing.errors] == [payloads.MISSING_FIELD] * 2


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
    assert set(schemas) == {
        "telemetry",
        "batch",
        "setpoint",
        "setpoint_batch",
        "ack",
        "ack_batch",
        "status",
    }
    assert schemas["setpoint_batch"]["required"] == ["setpoints"]
    assert schemas["ack_batch"]["required"] == ["acks"]
    assert schemas["telemetry"]["required"] == ["power_kw"]
    assert set(schemas["setpoint"]["required"]) == {
        "id",
        "device",
        "power_kw",
        "issued_at",
        "valid_until",
    }


def test_setpoint_batch_round_trip_states_shared_times_once() -> None:
    later = NOW + timedelta(seconds=1)
    setpoints = [
        Setpoint("gen-a", -250.0, NOW, NOW + timedelta(seconds=10), "c-1"),
        Setpoint("bat-b", 40.0, NOW, NOW + timedelta(seconds=10), "c-2"),
        Setpoint("cold-b", 12.5, later, later + timedelta(seconds=10), "c-3"),
    ]
    raw = payloads.encode_setpoints(
        list(zip(setpoints, ["dg1", "bat-b", "cold"], strict=True)), reply_to="vpp/e/gw/ack"
    )
    body = json.loads(raw)
    assert [set(e) for e in body["setpoints"][:2]] == [{"id", "device", "power_kw"}] * 2
    assert {"issued_at", "valid_until"} <= set(body["setpoints"][2])
    batch = payloads.decode_setpoints(raw)
    assert batch.batched and batch.errors == []
    assert batch.commands == [
        payloads.SetpointMessage(
            s.correlation_id, device, s.power_kw, s.issued_at, s.valid_until, "vpp/e/gw/ack"
        )
        for s, device in zip(setpoints, ["dg1", "bat-b", "cold"], strict=True)
    ]


def test_the_single_setpoint_form_decodes_as_a_batch_of_one() -> None:
    setpoint = Setpoint("gen-a", -250.0, NOW, NOW + timedelta(seconds=10), "c-1")
    batch = payloads.decode_setpoints(payloads.encode_setpoint(setpoint, "dg1"))
    assert not batch.batched
    assert batch.commands == [payloads.decode_setpoint(payloads.encode_setpoint(setpoint, "dg1"))]


def test_a_bad_setpoint_entry_is_reported_and_the_others_kept() -> None:
    raw = json.dumps(
        {
            "v": 1,
            "issued_at": NOW.isoformat(),
            "valid_until": (NOW + timedelta(seconds=5)).isoformat(),
            "setpoints": [
                {"id": "c-1", "device": "a", "power_kw": 5},
                {"id": "c-2", "device": "b", "power_kw": "5"},
                {"id": "c-3", "power_kw": 5.0},
                3,
            ],
        }
    )
    batch = payloads.decode_setpoints(raw)
    assert [c.correlation_id for c in batch.commands] == ["c-1"]
    assert [reason for reason, _ in batch.errors] == [
        payloads.WRONG_TYPE,
        payloads.MISSING_FIELD,
        payloads.WRONG_TYPE,
    ]
    no_times = b'{"setpoints": [{"id": "c", "device": "a", "power_kw": 1.0}]}'
    assert payloads.decode_setpoints(no_times).errors[0][0] == payloads.MISSING_FIELD
    assert reason_of(payloads.decode_setpoints, b'{"setpoints": {}}') == payloads.WRONG_TYPE


def test_ack_batch_round_trip_and_the_single_form() -> None:
    acks = [
        (SetpointAck("c-1", "gen-a", True, NOW, applied_power_kw=-240.0), "dg1"),
        (SetpointAck("c-2", "bat-b", False, NOW, reason="local_override"), "bat-b"),
        (SetpointAck("c-3", "cold-b", True, NOW + timedelta(seconds=1)), "cold"),
    ]
    raw = payloads.encode_acks(acks)
    body = json.loads(raw)
    assert "at" not in body["acks"][0] and "at" in body["acks"][2]
    batch = payloads.decode_acks(raw)
    assert batch.errors == []
    assert [m.device_id for m in batch.acks] == ["dg1", "bat-b", "cold"]
    assert [m.to_ack(a.asset_id) for m, (a, _) in zip(batch.acks, acks, strict=True)] == [
        a for a, _ in acks
    ]
    single = payloads.decode_acks(payloads.encode_ack(acks[0][0], "dg1"))
    assert single.acks == [payloads.decode_ack(payloads.encode_ack(acks[0][0], "dg1"))]


def test_a_bad_ack_entry_is_reported_and_the_others_kept() -> None:
    raw = json.dumps(
        {
            "at": NOW.timestamp(),
            "acks": [
                {"id": "c-1", "accepted": True},
                {"id": "c-2", "accepted": "yes"},
                {"accepted": True},
                {"id": "c-4", "accepted": True, "at": "soon"},
            ],
        }
    )
    batch = payloads.decode_acks(raw)
    assert [(m.correlation_id, m.at) for m in batch.acks] == [("c-1", NOW)]
    assert [reason for reason, _ in batch.errors] == [
        payloads.WRONG_TYPE,
        payloads.MISSING_FIELD,
        payloads.BAD_TIMESTAMP,
    ]
    assert payloads.decode_acks(b'{"acks": [{"id": "c", "accepted": true}]}').errors == [
        (payloads.MISSING_FIELD, "ack 0: ack has no at")
    ]
    assert reason_of(payloads.decode_acks, b'{"acks": 5}') == payloads.WRONG_TYPE


def test_status_says_whether_the_device_takes_batched_setpoints() -> None:
    assert payloads.decode_status(payloads.encode_status(True, NOW, set_batch=True)).set_batch
    assert not payloads.decode_status(payloads.encode_status(True, NOW)).set_batch
    assert not payloads.decode_status(b"online").set_batch
    bad = b'{"state": "online", "set_batch": 1}'
    assert reason_of(payloads.decode_status, bad) == payloads.WRONG_TYPE


def test_measurements_built_through_slots_equal_constructed_ones() -> None:
    assert payloads._SETTERS is not None  # the fast path is in use with this Measurement
    made = payloads.new_measurement("a", NOW, -1.5, 0.25, -18.0, 12.0, False)
    assert made == Measurement("a", NOW, -1.5, 0.25, -18.0, 12.0, False)
    assert hash(made) == hash(Measurement("a", NOW, -1.5, 0.25, -18.0, 12.0, False))
    assert payloads.new_measurement("a", NOW, 2.0) == Measurement("a", NOW, 2.0)
    (decoded,) = payloads.decode_batch(
        json.dumps({"ts": NOW.timestamp(), "readings": [{"id": "a", "power_kw": 2.0}]})
    ).measurements
    assert type(decoded) is Measurement and decoded == Measurement("a", NOW, 2.0)


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


ack_entries = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=3), st.integers(), st.none()),
        "device": values,
        "accepted": values,
        "at": st.one_of(st.just(NOW.timestamp()), st.just("later"), values),
        "applied_power_kw": values,
        "reason": values,
    },
)


@settings(max_examples=300, deadline=None)
@given(ack_entries)
def test_decoder_and_schema_agree_on_every_batched_ack(entry: dict[str, Any]) -> None:
    raw = json.dumps({"at": NOW.timestamp(), "acks": [entry]})
    batch = payloads.decode_acks(raw)
    try:
        (model,) = payloads.AckBatchSchema.model_validate_json(raw).acks
        # the schema types times; their range and format are the decoder's to check
        payloads.parse_timestamp(model.at if model.at is not None else NOW.timestamp())
        schema_ok = True
    except (ValidationError, PayloadError):
        schema_ok = False
    assert (len(batch.acks) == 1) == schema_ok, batch.errors


uniform_readings = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["a", "b", "dg1", ""]),
            "power_kw": st.one_of(st.floats(-1e4, 1e4), st.integers(-5, 5)),
        },
        optional={"soc": st.one_of(st.floats(0, 1), st.booleans()), "ts": st.just("bad")},
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(uniform_readings)
def test_a_batch_decodes_as_its_readings_decode_one_by_one(readings: list[dict[str, Any]]) -> None:
    """Batches of one shape take a column-wise path; it must agree with the reading-wise one."""
    resolve = {"dg1": "gen-a"}
    whole = payloads.decode_batch(
        json.dumps({"ts": NOW.timestamp(), "readings": readings}), resolve
    )
    one_by_one = [
        payloads.decode_batch(json.dumps({"ts": NOW.timestamp(), "readings": [r]}), resolve)
        for r in readings
    ]
    assert whole.measurements == [m for part in one_by_one for m in part.measurements]
    assert [reason for reason, _ in whole.errors] == [
        reason for part in one_by_one for reason, _ in part.errors
    ]
    assert all(type(m) is Measurement for m in whole.measurements)
