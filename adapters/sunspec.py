"""SunSpec model layouts and register encode/decode, pure (no I/O).

Offsets, types, scale-factor names and access rights come from pysunspec2's JSON model
definitions, never from hand-typed addresses: `layout(802).point("W")` says where a point lives
in its model and how to read it. A model's register block starts with its ID and L registers
(offset 0 and 1); a device's chain of models starts after the "SunS" marker at its base address.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sunspec2 import device as sunspec_device

from vpp.errors import PayloadError

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
HEADER_REGISTERS = 2  # every model starts with its ID and its length L

COMMON_MODEL = 1
BATTERY_MODEL = 802
DER_CONTROLS_MODEL = 704

# Register count of each fixed-size point type; strings take their `size`.
_TYPE_REGISTERS: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "count": 1,
    "acc16": 1,
    "enum16": 1,
    "bitfield16": 1,
    "pad": 1,
    "sunssf": 1,
    "int32": 2,
    "uint32": 2,
    "acc32": 2,
    "enum32": 2,
    "bitfield32": 2,
    "ipaddr": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "acc64": 4,
    "float64": 4,
    "eui48": 4,
    "ipv6addr": 8,
}

# struct format and the "not implemented" bit pattern of each numeric type.
_FORMATS: dict[str, tuple[str, int | None]] = {
    "int16": (">h", -0x8000),
    "sunssf": (">h", -0x8000),
    "uint16": (">H", 0xFFFF),
    "count": (">H", 0xFFFF),
    "enum16": (">H", 0xFFFF),
    "bitfield16": (">H", 0xFFFF),
    "acc16": (">H", 0),
    "pad": (">H", None),
    "int32": (">i", -0x80000000),
    "uint32": (">I", 0xFFFFFFFF),
    "enum32": (">I", 0xFFFFFFFF),
    "bitfield32": (">I", 0xFFFFFFFF),
    "acc32": (">I", 0),
    "ipaddr": (">I", 0),
    "int64": (">q", -0x8000000000000000),
    "uint64": (">Q", 0xFFFFFFFFFFFFFFFF),
    "acc64": (">Q", 0),
    "float32": (">f", None),
    "float64": (">d", None),
}

# Scale factors outside this range are not a plausible device setting but a corrupt register.
SF_RANGE = (-10, 10)


@dataclass(frozen=True, slots=True)
class PointDef:
    """Where one top-level point of a model lives and how it is encoded."""

    name: str
    type: str
    offset: int  # registers from the model's ID register
    size: int  # registers
    sf: str | int | None  # scale-factor point name, fixed exponent, or none
    writable: bool
    mandatory: bool
    symbols: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """A model's top-level points by name and its length L (registers after ID and L)."""

    model_id: int
    name: str
    length: int
    points: Mapping[str, PointDef]

    def point(self, name: str) -> PointDef:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"SunSpec model {self.model_id} has no point {name!r}") from None

    def span(self, *names: str) -> tuple[int, int]:
        """First offset and register count covering the named points."""
        points = [self.point(n) for n in names]
        start = min(p.offset for p in points)
        end = max(p.offset + p.size for p in points)
        return start, end - start

    def symbol(self, point: str, symbol: str) -> int:
        return self.point(point).symbols[symbol]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model found in a device's chain: its id, the address of its ID register, its L."""

    model_id: int
    address: int
    length: int


def _group_registers(group: Mapping[str, Any]) -> int:
    total = 0
    for point in group.get("points", []):
        total += _point_size(point)
    for sub in group.get("groups", []):
        count = sub.get("count", 1)
        if not isinstance(count, int):
            # A repeating group whose count is a point: the length is only known on the device.
            raise ValueError(f"group {sub.get('name')} repeats by point {count!r}")
        total += count * _group_registers(sub)
    return total


def _point_size(point: Mapping[str, Any]) -> int:
    size = point.get("size")
    if size is not None:
        return int(size)
    return _TYPE_REGISTERS[str(point["type"])]


@cache
def layout(model_id: int) -> ModelLayout:
    """The layout of a SunSpec model, read from pysunspec2's definition of it."""
    try:
        definition = sunspec_device.get_model_def(model_id)
    except Exception as err:  # pysunspec2 raises its own ModelDefinitionError or OSError
        raise KeyError(f"no SunSpec definition for model {model_id}: {err}") from err
    group = definition["group"]
    points: dict[str, PointDef] = {}
    offset = 0
    for point in group["points"]:
        size = _point_size(point)
        sf = point.get("sf")
        points[point["name"]] = PointDef(
            name=point["name"],
            type=point["type"],
            offset=offset,
            size=size,
            sf=int(sf) if isinstance(sf, int) else (str(sf) if sf is not None else None),
            writable=point.get("access") == "RW",
            mandatory=point.get("mandatory") == "M",
            symbols={s["name"]: int(s["value"]) for s in point.get("symbols", [])},
        )
        offset += size
    try:
        length = _group_registers(group) - HEADER_REGISTERS
    except ValueError:
        length = offset - HEADER_REGISTERS
    return ModelLayout(model_id, str(group["name"]), length, points)


# --- raw point values -------------------------------------------------------------------------


def _to_bytes(registers: Sequence[int]) -> bytes:
    return b"".join(int(r).to_bytes(2, "big") for r in registers)


def decode_raw(registers: Sequence[int], point: PointDef) -> int | float | str | None:
    """The raw value of `point` from the model's registers; None when it is not implemented.

    `registers` starts at the model's ID register (offset 0).
    """
    words = registers[point.offset : point.offset + point.size]
    if len(words) != point.size:
        raise PayloadError(
            "short_read", f"point {point.name} needs registers up to {point.offset + point.size}"
        )
    data = _to_bytes(words)
    if point.type == "string":
        text = data.split(b"\0", 1)[0]
        return text.decode("utf-8", errors="replace") or None
    fmt = _FORMATS.get(point.type)
    if fmt is None:
        raise PayloadError("unsupported_type", f"point {point.name} has type {point.type}")
    (value,) = struct.unpack(fmt[0], data)
    if point.type in ("float32", "float64"):
        return None if math.isnan(value) else float(value)
    if fmt[1] is not None and value == fmt[1]:
        return None
    return int(value)


def encode_raw(value: int | float | str | None, point: PointDef) -> list[int]:
    """Registers holding `value` (None: the not-implemented pattern) for `point`."""
    if point.type == "string":
        data = (str(value) if value is not None else "").encode("utf-8")
        if len(data) > point.size * 2:
            raise PayloadError("out_of_range", f"{point.name}: string longer than {point.size}")
        data = data.ljust(point.size * 2, b"\0")
    else:
        fmt, unimplemented = _FORMATS[point.type]
        if value is None:
            if unimplemented is not None:
                data = struct.pack(fmt, unimplemented)
            elif point.type == "float32":
                data = struct.pack(">I", 0x7FC00000)
            elif point.type == "float64":
                data = struct.pack(">Q", 0x7FF8000000000000)
            else:
                data = bytes(point.size * 2)
        else:
            try:
                data = struct.pack(fmt, value if fmt[1] in "fd" else int(value))
            except (struct.error, ValueError, OverflowError) as err:
                raise PayloadError(
                    "out_of_range", f"{point.name}: {value!r} does not fit {point.type}"
                ) from err
            if unimplemented is not None and int(value) == unimplemented:
                raise PayloadError(
                    "out_of_range", f"{point.name}: {value!r} is the not-implemented marker"
                )
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# --- scaled values ----------------------------------------------------------------------------


def scale_exponent(registers: Sequence[int], model: ModelLayout, point: PointDef) -> int:
    """The power of ten applied to `point`; PayloadError when its scale factor is unusable."""
    if point.sf is None:
        return 0
    if isinstance(point.sf, int):
        return point.sf
    exponent = decode_raw(registers, model.point(point.sf))
    if not isinstance(exponent, int):
        raise PayloadError("not_implemented", f"model {model.model_id} {point.sf} not set")
    if not SF_RANGE[0] <= exponent <= SF_RANGE[1]:
        raise PayloadError("malformed", f"model {model.model_id} {point.sf}={exponent}")
    return exponent


def read_scaled(registers: Sequence[int], model: ModelLayout, name: str) -> float | None:
    """A point's value in its model units (W, %, ...), None when not implemented."""
    point = model.point(name)
    raw = decode_raw(registers, point)
    if raw is None:
        return None
    if isinstance(raw, str):
        raise PayloadError("wrong_type", f"model {model.model_id} {name} is a string")
    return float(raw) * 10.0 ** scale_exponent(registers, model, point)


def encode_scaled(value: float, exponent: int, point: PointDef) -> list[int]:
    """Registers holding `value` for a point whose scale factor is `exponent`."""
    if not math.isfinite(value):
        raise PayloadError("out_of_range", f"{point.name}: {value!r} is not finite")
    raw = value / 10.0**exponent
    return encode_raw(raw if point.type.startswith("float") else round(raw), point)


# --- model chain and whole-model images --------------------------------------------------------


def is_marker(registers: Sequence[int]) -> bool:
    return tuple(registers[:2]) == SUNS_MARKER


def encode_model(model_id: int, values: Mapping[str, int | float | str | None]) -> list[int]:
    """A model's whole register block (ID and L included) with raw point values.

    Points not in `values` hold their not-implemented pattern; nested groups are zero-filled.
    Used by device emulators and tests; the adapter reads, it does not build images.
    """
    model = layout(model_id)
    registers = [0] * (model.length + HEADER_REGISTERS)
    for name, point in model.points.items():
        if name == "ID":
            raw: int | float | str | None = model_id
        elif name == "L":
            raw = model.length
        else:
            raw = values.get(name)
        registers[point.offset : point.offset + point.size] = encode_raw(raw, point)
    unknown = set(values) - set(model.points)
    if unknown:
        raise KeyError(f"SunSpec model {model_id} has no points {sorted(unknown)}")
    return registers


def chain_image(models: Sequence[tuple[int, Mapping[str, int | float | str | None]]]) -> list[int]:
    """Registers from the base address: marker, each model's block, the end model."""
    registers = list(SUNS_MARKER)
    for model_id, values in models:
        registers.extend(encode_model(model_id, values))
    registers.extend([END_MODEL_ID, 0])
    return registers
