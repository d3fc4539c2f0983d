"""A battery plant behind a pymodbus TCP server on loopback, for the Modbus adapter's tests.

The plant integrates its power toward the last accepted setpoint at a finite ramp rate and
updates its state of charge; the server exposes it either as a SunSpec device (models 1, 802,
704 from pysunspec2's definitions) or through a plain register map. The model is advanced
lazily, on every Modbus request, so no background task is needed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters import sunspec
from vpp.config.schema import ModbusRegister


@dataclass(slots=True)
class BatteryPlant:
    """A battery: project sign (positive = charging, drawn from the grid), kW and kWh."""

    rating_kw: float = 100.0
    capacity_kwh: float = 200.0
    soc_fraction: float = 0.5
    power_kw: float = 0.0
    target_kw: float = 0.0
    ramp_kw_per_s: float = 400.0
    state: str = "CONNECTED"  # a model 802 State symbol
    refuse_writes: bool = False  # answer every setpoint write with ILLEGAL_VALUE
    corrupt_power: bool = False  # report the not-a-value marker instead of the power
    writes: int = 0
    _last_s: float = field(default_factory=time.monotonic)

    def advance(self) -> None:
        now = time.monotonic()
        dt, self._last_s = now - self._last_s, now
        step = self.ramp_kw_per_s * dt
        gap = self.target_kw - self.power_kw
        self.power_kw += max(-step, min(step, gap))
        if (self.soc_fraction >= 1.0 and self.power_kw > 0) or (
            self.soc_fraction <= 0.0 and self.power_kw < 0
        ):
            self.power_kw = 0.0
        self.soc_fraction += self.power_kw * dt / 3600.0 / self.capacity_kwh
        self.soc_fraction = min(max(self.soc_fraction, 0.0), 1.0)

    def accepts(self, target_kw: float) -> bool:
        return not self.refuse_writes and abs(target_kw) <= self.rating_kw


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- register-map encoding, done with pymodbus's own converter plus a byte swap ---------------

_DATATYPES = {
    "int16": AsyncModbusTcpClient.DATATYPE.INT16,
    "uint16": AsyncModbusTcpClient.DATATYPE.UINT16,
    "int32": AsyncModbusTcpClient.DATATYPE.INT32,
    "uint32": AsyncModbusTcpClient.DATATYPE.UINT32,
    "float32": AsyncModbusTcpClient.DATATYPE.FLOAT32,
}


def _swap(words: Sequence[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def map_encode(value: float, register: ModbusRegister) -> list[int]:
    raw: float | int = value / register.scale
    if register.type != "float32":
        raw = round(raw)
    words = AsyncModbusTcpClient.convert_to_registers(
        raw, _DATATYPES[register.type], word_order=register.word_order
    )
    return _swap(words) if register.byte_order == "little" else list(words)


_MARKERS: dict[str, float | int] = {
    "int16": -0x8000,
    "uint16": 0xFFFF,
    "int32": -0x80000000,
    "uint32": 0xFFFFFFFF,
    "float32": float("nan"),
}


def map_marker(register: ModbusRegister) -> list[int]:
    """The not-a-value pattern of the register's type, in the register's byte and word order."""
    words = AsyncModbusTcpClient.convert_to_registers(
        _MARKERS[register.type], _DATATYPES[register.type], word_order=register.word_order
    )
    return _swap(words) if register.byte_order == "little" else list(words)


def map_decode(words: Sequence[int], register: ModbusRegister) -> float:
    if register.byte_order == "little":
        words = _swap(words)
    raw = AsyncModbusTcpClient.convert_from_registers(
        list(words), _DATATYPES[register.type], word_order=register.word_order
    )
    assert isinstance(raw, int | float)
    return float(raw) * register.scale


# --- the server --------------------------------------------------------------------------------


class ModbusPlantServer:
    """Serves a `BatteryPlant` over Modbus TCP on 127.0.0.1; stop and start keep the plant."""

    def __init__(
        self,
        plant: BatteryPlant,
        *,
        layout: Literal["sunspec", "map"] = "sunspec",
        registers: Sequence[ModbusRegister] = (),
        base_address: int = 40000,
        w_sf: int = 1,
        wset_sf: int = 0,
        port: int | None = None,
    ) -> None:
        self.plant = plant
        self.layout = layout
        self.registers = list(registers)
        self.base_address = base_address
        self.w_sf = w_sf
        self.wset_sf = wset_sf
        self.port = port or free_port()
        self._server: ModbusTcpServer | None = None
        self.start_address, self._image = self._build_image()
        self._live: list[int] | None = None

    # --- register image --------------------------------------------------------------------

    def _build_image(self) -> tuple[int, list[int]]:
        if self.layout == "map":
            low = min(r.address for r in self.registers)
            high = max(
                r.address + (1 if r.type in ("int16", "uint16") else 2) for r in self.registers
            )
            return low, [0] * (high - low)
        battery = sunspec.layout(sunspec.BATTERY_MODEL)
        common = sunspec.layout(sunspec.COMMON_MODEL)
        self.addr_802 = self.base_address + 2 + common.length + 2
        self.addr_704 = self.addr_802 + battery.length + 2
        sym = battery.point("State").symbols
        image = sunspec.chain_image(
            [
                (1, {"Mn": "VPP test", "Md": "battery plant", "SN": "PLANT-1", "DA": 1}),
                (
                    802,
                    {
                        "AHRtg": 400,
                        "WHRtg": round(self.plant.capacity_kwh * 1000 / 10),
                        "WHRtg_SF": 1,
                        "WChaRteMax": round(self.plant.rating_kw * 1000 / 10),
                        "WDisChaRteMax": round(self.plant.rating_kw * 1000 / 10),
                        "WChaDisChaMax_SF": 1,
                        "SoC_SF": -1,
                        "W_SF": self.w_sf,
                        "LocRemCtl": 0,
                        "State": sym[self.plant.state],
                        "Typ": 4,
                        "SetOp": 1,
                        "SetInvState": 3,
                        "AlmRst": 0,
                        "Evt1": 0,
                        "Evt2": 0,
                        "EvtVnd1": 0,
                        "EvtVnd2": 0,
                        "V": 8000,
                        "V_SF": -1,
                        "CellV_SF": -3,
                        "A_SF": -1,
                        "AMax_SF": 0,
                        "AHRtg_SF": 0,
                    },
                ),
                (704, {"WSetEna": 0, "WSetMod": 1, "WSet": 0, "WSet_SF": self.wset_sf}),
            ]
        )
        return self.base_address, image

    def _put(self, registers: list[int], start: int, address: int, words: Sequence[int]) -> None:
        registers[address - start : address - start + len(words)] = list(words)

    def _refresh(self, registers: list[int], start: int) -> None:
        """Write the plant's current state into the served registers."""
        plant = self.plant
        plant.advance()
        if self.layout == "map":
            for register in self.registers:
                if register.name == "power":
                    value = plant.power_kw
                elif register.name == "soc":
                    value = plant.soc_fraction
                elif register.name == "available":
                    value = 1.0 if plant.state == "CONNECTED" else 0.0
                elif register.name == "temperature":
                    value = 25.0
                else:
                    continue
                if register.name == "power" and plant.corrupt_power:
                    words = map_marker(register)
                else:
                    words = map_encode(value, register)
                self._put(registers, start, register.address, words)
            return
        battery = sunspec.layout(sunspec.BATTERY_MODEL)
        watts = -plant.power_kw * 1000.0  # SunSpec: positive = discharging
        w_words = (
            [0x8000]
            if plant.corrupt_power
            else sunspec.encode_scaled(watts, self.w_sf, battery.point("W"))
        )
        self._put(registers, start, self.addr_802 + battery.point("W").offset, w_words)
        soc = sunspec.encode_scaled(plant.soc_fraction * 100.0, -1, battery.point("SoC"))
        self._put(registers, start, self.addr_802 + battery.point("SoC").offset, soc)
        state = battery.point("State")
        self._put(
            registers,
            start,
            self.addr_802 + state.offset,
            sunspec.encode_raw(state.symbols[plant.state], state),
        )

    def _written_target(
        self, registers: list[int], start: int, address: int, values: Sequence[int]
    ) -> float | None:
        """The setpoint (kW, project sign) a write would set, or None if it sets none."""
        after = list(registers)
        after[address - start : address - start + len(values)] = list(values)
        if self.layout == "map":
            register = next((r for r in self.registers if r.name == "setpoint"), None)
            if register is None:
                return None
            width = 1 if register.type in ("int16", "uint16") else 2
            if address >= register.address + width or address + len(values) <= register.address:
                return None
            at = register.address - start
            return map_decode(after[at : at + width], register)
        controls = sunspec.layout(sunspec.DER_CONTROLS_MODEL)
        first, count = controls.span("WSetEna", "WSetMod", "WSet")
        lo = self.addr_704 + first
        if address >= lo + count or address + len(values) <= lo:
            return None
        block = after[self.addr_704 - start : self.addr_704 - start + controls.length + 2]
        if sunspec.decode_raw(block, controls.point("WSetEna")) != 1:
            return 0.0
        watts = sunspec.read_scaled(block, controls, "WSet")
        return None if watts is None else -watts / 1000.0

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self._live = current_registers
        self._refresh(current_registers, start_address)
        if set_values is None:
            return None
        values = [int(v) for v in set_values]
        target = self._written_target(current_registers, start_address, address, values)
        if target is None:
            return None
        self.plant.writes += 1
        if not self.plant.accepts(target):
            return ExcCodes.ILLEGAL_VALUE
        self.plant.target_kw = target
        return None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        device = SimDevice(
            id=0,
            simdata=[
                SimData(
                    address=self.start_address,
                    values=self._image,
                    datatype=DataType.REGISTERS,
                )
            ],
            action=self._action,
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._live is not None:  # a restarted server keeps what was written before
            self._image = list(self._live[: len(self._image)])
            self._live = None

    def register_words(self, address: int, count: int) -> list[int]:
        """The served registers as last refreshed (for assertions)."""
        source = self._live if self._live is not None else self._image
        offset = address - self.start_address
        return list(source[offset : offset + count])

    async def __aenter__(self) -> ModbusPlantServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
