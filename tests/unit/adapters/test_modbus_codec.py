"""Register-map codec: every type, byte order and word order against pymodbus's own converter."""

from __future__ import annotations

import math
from typing import Literal, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from adapters.modbus import NAN_MARKERS, decode_register, encode_register
from vpp.config.schema import ModbusRegister
from vpp.errors import PayloadError

DT = AsyncModbusTcpClient.DATATYPE
DATATYPES = {
    "int16": DT.INT16,
    "uint16": DT.UINT16,
    "int32": DT.INT32,
    "uint32": DT.UINT32,
    "float32": DT.FLOAT32,
}
RANGES = {
    "int16": (-0x8000 + 1, 0x7FFF),
    "uint16": (0, 0xFFFF - 1),
    "int32": (-0x80000000 + 1, 0x7FFFFFFF),
    "uint32": (0, 0xFFFFFFFF - 1),
}
COMBINATIONS = [
    (kind, byte_order, word_order)
    for kind in DATATYPES
    for byte_order in ("big", "little")
    for word_order in ("big", "little")
]


WordOrder = Literal["big", "little"]


def swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def reference_words(raw: float, kind: str, byte_order: str, word_order: str) -> list[int]:
    """Encoding by pymodbus (word order) plus a byte swap inside each register."""
    value = raw if kind == "float32" else int(raw)
    order = cast(WordOrder, word_order)
    words = list(AsyncModbusTcpClient.convert_to_registers(value, DATATYPES[kind], order))
    return swap_bytes(words) if byte_order == "little" else words


def register(kind: str, byte_order: str, word_order: str, scale: float = 1.0) -> ModbusRegister:
    return ModbusRegister.model_validate(
        {
            "name": "power",
            "address": 10,
            "type": kind,
            "scale": scale,
            "byte_order": byte_order,
            "word_order": word_order,
        }
    )


def raw_values(kind: str) -> st.SearchStrategy[float]:
    if kind == "float32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    low, high = RANGES[kind]
    return st.integers(low, high).map(float)


@pytest.mark.parametrize(("kind", "byte_order", "word_order"), COMBINATIONS)
@given(data=st.data(), scale=st.sampled_from([1.0, 0.1, 0.001, 10.0, -1.0]))
def test_encode_matches_pymodbus_and_round_trips(
    kind: str, byte_order: str, word_order: str, data: st.DataObject, scale: float
) -> None:
    raw = data.draw(raw_values(kind))
    reg = register(kind, byte_order, word_order, scale)
    value = raw * scale
    words = encode_register(value, reg)
    assert words == reference_words(raw, kind, byte_order, word_order)
    decoded = decode_register(words, reg)
    if kind == "float32":
        assert decoded == pytest.approx(value, rel=1e-6, abs=1e-30)
    else:
        assert decoded == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(("kind", "byte_order", "word_order"), COMBINATIONS)
@given(data=st.data())
def test_decode_matches_pymodbus_or_rejects_markers(
    kind: str, byte_order: str, word_order: str, data: st.DataObject
) -> None:
    width = 1 if kind in ("int16", "uint16") else 2
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width))
    reg = register(kind, byte_order, word_order, scale=0.5)
    device_words = swap_bytes(words) if byte_order == "little" else words
    expected = AsyncModbusTcpClient.convert_from_registers(
        device_words, DATATYPES[kind], cast(WordOrder, word_order)
    )
    assert isinstance(expected, int | float)
    as_unsigned = AsyncModbusTcpClient.convert_from_registers(
        device_words, DT.UINT16 if width == 1 else DT.UINT32, cast(WordOrder, word_order)
    )
    is_marker = NAN_MARKERS.get(kind) == as_unsigned or (
        kind == "float32" and not math.isfinite(float(expected))
    )
    if is_marker:
        with pytest.raises(PayloadError) as caught:
            decode_register(words, reg)
        assert caught.value.reason == "nan_marker"
    else:
        assert decode_register(words, reg) == float(expected) * 0.5


@pytest.mark.parametrize(
    ("kind", "byte_order", "word_order", "words", "value"),
    [
        ("int32", "big", "big", [0x0001, 0x0002], 65538.0),
        ("int32", "big", "little", [0x0002, 0x0001], 65538.0),
        ("int32", "little", "big", [0x0100, 0x0200], 65538.0),
        ("int32", "little", "little", [0x0200, 0x0100], 65538.0),
        ("float32", "big", "big", [0x3F80, 0x0000], 1.0),
        ("float32", "little", "little", [0x0000, 0x803F], 1.0),
        ("int16", "big", "big", [0xFFFE], -2.0),
        ("int16", "little", "big", [0xFEFF], -2.0),
        ("uint16", "big", "big", [0xFFFE], 65534.0),
    ],
)
def test_known_vectors(
    kind: str, byte_order: str, word_order: str, words: list[int], value: float
) -> None:
    reg = register(kind, byte_order, word_order)
    assert decode_register(words, reg) == value
    assert encode_register(value, reg) == words


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("int16", [0x8000]),
        ("uint16", [0xFFFF]),
        ("int32", [0x8000, 0x0000]),
        ("uint32", [0xFFFF, 0xFFFF]),
        ("float32", [0x7FC0, 0x0000]),  # NaN
        ("float32", [0x7F80, 0x0000]),  # +inf
    ],
)
def test_nan_markers_are_rejected(kind: str, words: list[int]) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_register(words, register(kind, "big", "big"))
    assert caught.value.reason == "nan_marker"


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("int16", 40000.0),
        ("int16", -32768.0),  # the marker itself cannot be written as a value
        ("uint16", -1.0),
        ("uint32", 2.0**32),
        ("int32", float("nan")),
        ("float32", 1e39),
    ],
)
def test_values_that_do_not_fit_are_refused(kind: str, value: float) -> None:
    with pytest.raises(PayloadError) as caught:
        encode_register(value, register(kind, "big", "big"))
    assert caught.value.reason == "out_of_range"


def test_wrong_register_count_is_malformed() -> None:
    with pytest.raises(PayloadError) as caught:
        decode_register([1], register("int32", "big", "big"))
    assert caught.value.reason == "malformed"
