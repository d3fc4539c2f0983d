"""Modbus TCP adapter: SunSpec battery inverters (models 1, 802, 704) and plain register maps.

Each enrolled device gets its own pymodbus client and link task. A link discovers the device's
SunSpec model chain (or checks its register map), polls telemetry into the sink, and answers
`send` with an ack built from the write response, a read-back of the setpoint and the measured
power moving toward it. pymodbus errors and timeouts become `AdapterError` in `_request`, the one
place that talks to the client; a lost link is retried with jittered capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from adapters import sunspec
from adapters._retry import Backoff
from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from vpp.clock import Clock
from vpp.config.schema import ModbusConnection, ModbusRegister
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.errors import AdapterError, PayloadError

log = logging.getLogger(__name__)

MAX_READ_REGISTERS = 125  # Modbus limit for one read of holding registers
MAX_CHAIN_MODELS = 64  # a longer SunSpec chain is a corrupt device, not a real one
ACK_POLL_S = 0.1  # how often the measured power is read while waiting for an ack

# 802 battery-bank states in which the bank cannot follow a setpoint.
_UNAVAILABLE_STATES = frozenset({"DISCONNECTED", "FAULT"})


# --- register-map codec (pure) -----------------------------------------------------------------

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]

REGISTER_WIDTH: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_STRUCT_FORMAT: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
}
# Bit patterns devices use for "no value" (the SunSpec convention, which most maps follow).
NAN_MARKERS: dict[str, int] = {
    "int16": 0x8000,
    "uint16": 0xFFFF,
    "int32": 0x80000000,
    "uint32": 0xFFFFFFFF,
}


def _value_bytes(registers: Sequence[int], byte_order: str, word_order: str) -> bytes:
    """The value's bytes, most significant first, from registers in the device's order."""
    words = list(registers)
    if word_order == "little":
        words.reverse()
    out = bytearray()
    for word in words:
        pair = int(word).to_bytes(2, "big")
        out.extend(pair[::-1] if byte_order == "little" else pair)
    return bytes(out)


def _device_registers(data: bytes, byte_order: str, word_order: str) -> list[int]:
    words = []
    for i in range(0, len(data), 2):
        pair = data[i : i + 2]
        words.append(int.from_bytes(pair[::-1] if byte_order == "little" else pair, "big"))
    if word_order == "little":
        words.reverse()
    return words


def decode_register(registers: Sequence[int], register: ModbusRegister) -> float:
    """The register's value in project units (raw × scale); PayloadError for markers and NaN."""
    width = REGISTER_WIDTH[register.type]
    if len(registers) != width or any(not 0 <= r <= 0xFFFF for r in registers):
        raise PayloadError("malformed", f"{register.name}@{register.address}: bad register data")
    data = _value_bytes(registers, register.byte_order, register.word_order)
    marker = NAN_MARKERS.get(register.type)
    if marker is not None and int.from_bytes(data, "big") == marker:
        raise PayloadError(
            "nan_marker", f"{register.name}@{register.address}: not-a-value marker {marker:#x}"
        )
    (raw,) = struct.unpack(_STRUCT_FORMAT[register.type], data)
    value = float(raw) * register.scale
    if not math.isfinite(value):
        raise PayloadError("nan_marker", f"{register.name}@{register.address}: {raw!r}")
    return value


def encode_register(value: float, register: ModbusRegister) -> list[int]:
    """Registers, in the device's order, holding `value` (project units) for `register`."""
    if not math.isfinite(value) or register.scale == 0:
        raise PayloadError("out_of_range", f"{register.name}: cannot encode {value!r}")
    raw = value / register.scale
    fmt = _STRUCT_FORMAT[register.type]
    try:
        data = struct.pack(fmt, raw if register.type == "float32" else round(raw))
    except (struct.error, OverflowError) as err:
        raise PayloadError(
            "out_of_range", f"{register.name}: {value!r} does not fit {register.type}"
        ) from err
    marker = NAN_MARKERS.get(register.type)
    if marker is not None and int.from_bytes(data, "big") == marker:
        raise PayloadError("out_of_range", f"{register.name}: {value!r} is the not-a-value marker")
    return _device_registers(data, register.byte_order, register.word_order)


# --- adapter -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModbusDevice:
    """One enrolled asset reached over Modbus TCP."""

    asset_id: str
    connection: ModbusConnection


class DeviceRefusedError(AdapterError):
    """The device answered a request with a Modbus exception; `code` is its exception code."""

    def __init__(self, adapter: str, message: str, code: int) -> None:
        self.code = code
        super().__init__(adapter, message)


@dataclass(frozen=True, slots=True)
class _SunSpecMap:
    """Where a discovered device keeps the models the adapter uses."""

    battery: sunspec.ModelEntry
    controls: sunspec.ModelEntry | None
    identity: str


class _Link:
    """One device: its client, discovered layout, link state and counters."""

    def __init__(
        self,
        adapter: str,
        device: ModbusDevice,
        clock: Clock,
        backoff: Backoff,
        client_name: str,
    ) -> None:
        self.adapter = adapter
        self.asset_id = device.asset_id
        self.conn = device.connection
        self.clock = clock
        self.backoff = backoff
        self.client_name = client_name
        self.client: AsyncModbusTcpClient | None = None
        self.map: _SunSpecMap | None = None
        self.state = ConnectionState.DISCONNECTED
        self.reconnects = 0
        self.last_error = ""
        self.last_message_at: datetime | None = None
        self.last_power_kw: float | None = None
        self.io_lock = asyncio.Lock()
        self._ever_connected = False
        self._sink: TelemetrySink | None = None

    # --- the one place that talks to pymodbus ----------------------------------------------

    async def _request(self, what: str, call: Any) -> ModbusPDU:
        """Run one client request under the configured timeout; translate every failure."""
        client = self.client
        if client is None or not client.connected:
            raise AdapterError(self.adapter, f"{self.asset_id}: {what}: not connected")
        try:
            async with self.io_lock, asyncio.timeout(self.conn.timeout_s):
                response: ModbusPDU = await call(client)
        except TimeoutError as err:
            raise AdapterError(
                self.adapter, f"{self.asset_id}: {what}: no answer in {self.conn.timeout_s} s"
            ) from err
        except (ModbusException, OSError) as err:
            raise AdapterError(self.adapter, f"{self.asset_id}: {what}: {err}") from err
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceRefusedError(
                self.adapter, f"{self.asset_id}: {what}: device exception {code}", code
            )
        return response

    async def _read(self, address: int, count: int) -> list[int]:
        unit = self.conn.unit_id
        response = await self._request(
            f"read {count} registers at {address}",
            lambda c: c.read_holding_registers(address, count=count, device_id=unit),
        )
        registers = list(response.registers)
        if len(registers) < count:
            raise AdapterError(
                self.adapter, f"{self.asset_id}: read at {address}: {len(registers)}/{count}"
            )
        return registers[:count]

    async def _write(self, address: int, values: Sequence[int]) -> None:
        unit = self.conn.unit_id
        words = list(values)
        await self._request(
            f"write {len(words)} registers at {address}",
            lambda c: c.write_registers(address, words, device_id=unit),
        )

    async def _connect(self) -> None:
        self.client = AsyncModbusTcpClient(
            self.conn.host,
            port=self.conn.port,
            name=self.client_name,
            timeout=self.conn.timeout_s,
            retries=0,
            reconnect_delay=0,  # reconnects are ours, with jitter, not pymodbus's
        )
        try:
            async with asyncio.timeout(self.conn.timeout_s):
                connected = await self.client.connect()
        except TimeoutError as err:
            raise AdapterError(self.adapter, f"{self.asset_id}: connect timed out") from err
        except (ModbusException, OSError) as err:
            raise AdapterError(self.adapter, f"{self.asset_id}: connect: {err}") from err
        if not connected:
            raise AdapterError(
                self.adapter,
                f"{self.asset_id}: cannot connect to {self.conn.host}:{self.conn.port}",
            )

    def _close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # --- discovery -------------------------------------------------------------------------

    async def _discover(self) -> _SunSpecMap:
        base = self.conn.sunspec_base_address
        marker = await self._read(base, 2)
        if not sunspec.is_marker(marker):
            raise AdapterError(self.adapter, f"{self.asset_id}: no 'SunS' marker at {base}")
        entries: dict[int, sunspec.ModelEntry] = {}
        address = base + 2
        for _ in range(MAX_CHAIN_MODELS):
            model_id, length = await self._read(address, sunspec.HEADER_REGISTERS)
            if model_id == sunspec.END_MODEL_ID:
                break
            entries.setdefault(model_id, sunspec.ModelEntry(model_id, address, length))
            address += sunspec.HEADER_REGISTERS + length
        else:
            raise AdapterError(self.adapter, f"{self.asset_id}: SunSpec chain has no end model")
        battery = entries.get(sunspec.BATTERY_MODEL)
        if battery is None:
            raise AdapterError(self.adapter, f"{self.asset_id}: no SunSpec battery model 802")
        identity = ""
        common = entries.get(sunspec.COMMON_MODEL)
        if common is not None:
            identity = await self._identity(common)
        return _SunSpecMap(battery, entries.get(sunspec.DER_CONTROLS_MODEL), identity)

    async def _identity(self, common: sunspec.ModelEntry) -> str:
        layout = sunspec.layout(sunspec.COMMON_MODEL)
        registers = await self._read(common.address, min(layout.length, common.length) + 2)
        parts = []
        for name in ("Mn", "Md", "SN"):
            try:
                value = sunspec.decode_raw(registers, layout.point(name))
            except PayloadError:
                value = None
            parts.append(str(value or "?"))
        return " ".join(parts)

    async def _read_model(self, entry: sunspec.ModelEntry) -> list[int]:
        count = entry.length + sunspec.HEADER_REGISTERS
        registers: list[int] = []
        for start in range(0, count, MAX_READ_REGISTERS):
            size = min(MAX_READ_REGISTERS, count - start)
            registers.extend(await self._read(entry.address + start, size))
        if registers[0] != entry.model_id:
            raise AdapterError(
                self.adapter,
                f"{self.asset_id}: model {entry.model_id} moved (found {registers[0]})",
            )
        return registers

    # --- telemetry -------------------------------------------------------------------------

    async def read_measurement(self) -> Measurement:
        """One reading of the device; PayloadError when a value is missing or malformed."""
        if self.map is not None:
            return await self._read_sunspec(self.map)
        return await self._read_register_map()

    async def _read_sunspec(self, found: _SunSpecMap) -> Measurement:
        layout = sunspec.layout(sunspec.BATTERY_MODEL)
        registers = await self._read_model(found.battery)
        now = self.clock.now()
        watts = sunspec.read_scaled(registers, layout, "W")
        if watts is None:
            raise PayloadError("nan_marker", f"{self.asset_id}: model 802 W not implemented")
        soc_pct = sunspec.read_scaled(registers, layout, "SoC")
        state = sunspec.decode_raw(registers, layout.point("State"))
        names = {v: k for k, v in layout.point("State").symbols.items()}
        available = not (isinstance(state, int) and names.get(state) in _UNAVAILABLE_STATES)
        sign = -1.0 if self.conn.sunspec_discharge_positive else 1.0
        return Measurement(
            asset_id=self.asset_id,
            timestamp=now,
            power_kw=sign * watts / 1000.0 + 0.0,  # + 0.0: no negative zero in telemetry
            soc_fraction=soc_pct / 100.0 if soc_pct is not None else None,
            available=available,
        )

    async def _read_register_map(self) -> Measurement:
        values: dict[str, float] = {}
        now = self.clock.now()
        for register in self.conn.registers:
            if register.name == "setpoint":
                continue
            words = await self._read(register.address, REGISTER_WIDTH[register.type])
            values[register.name] = decode_register(words, register)
        return Measurement(
            asset_id=self.asset_id,
            timestamp=now,
            power_kw=values["power"],
            soc_fraction=values.get("soc"),
            temperature_c=values.get("temperature"),
            available=values.get("available", 1.0) != 0.0,
        )

    async def _measured_power_kw(self) -> float:
        if self.map is not None:
            registers = await self._read_model(self.map.battery)
            watts = sunspec.read_scaled(registers, sunspec.layout(sunspec.BATTERY_MODEL), "W")
            if watts is None:
                raise PayloadError("nan_marker", f"{self.asset_id}: model 802 W not implemented")
            sign = -1.0 if self.conn.sunspec_discharge_positive else 1.0
            return sign * watts / 1000.0
        register = self._register("power")
        assert register is not None  # the schema requires a power register without SunSpec
        words = await self._read(register.address, REGISTER_WIDTH[register.type])
        return decode_register(words, register)

    def _register(self, name: str) -> ModbusRegister | None:
        return next((r for r in self.conn.registers if r.name == name), None)

    # --- link loop -------------------------------------------------------------------------

    async def run(self, sink: TelemetrySink) -> None:
        self._sink = sink
        while True:
            try:
                self.state = ConnectionState.CONNECTING
                await self._connect()
                self.map = await self._discover() if self.conn.sunspec else None
                self._connected()
                while True:
                    await self._poll(sink)
                    await self.clock.sleep(self.conn.poll_interval_s)
            except AdapterError as err:
                self._lost(err, sink)
            finally:
                self._close()
            await self.clock.sleep(self.backoff.next_delay())

    def _connected(self) -> None:
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.state = ConnectionState.CONNECTED
        self.backoff.reset()
        what = f"SunSpec {self.map.identity}" if self.map is not None else "register map"
        log.info("%s: %s connected (%s)", self.adapter, self.asset_id, what)

    def _lost(self, err: AdapterError, sink: TelemetrySink) -> None:
        was_connected = self.state == ConnectionState.CONNECTED
        self.state = ConnectionState.DISCONNECTED
        if str(err) != self.last_error or was_connected:
            log.warning("%s", err)  # once per new error, not once per retry
        self.last_error = str(err)
        if was_connected:
            sink.set_available(self.asset_id, False, self.clock.now())

    async def _poll(self, sink: TelemetrySink) -> None:
        try:
            measurement = await self.read_measurement()
        except PayloadError as err:
            sink.reject(self.adapter, err.reason, f"{self.asset_id}: {err}")
            return
        self.last_message_at = measurement.timestamp
        self.last_power_kw = measurement.power_kw
        sink.accept(self.adapter, [measurement])

    # --- setpoints -------------------------------------------------------------------------

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        def refused(reason: str, applied: float | None = None) -> SetpointAck:
            return SetpointAck(
                setpoint.correlation_id,
                setpoint.asset_id,
                accepted=False,
                at=self.clock.now(),
                applied_power_kw=applied,
                reason=reason,
            )

        if setpoint.expired(self.clock.now()):
            return refused("expired")
        if self.state != ConnectionState.CONNECTED:
            return refused("disconnected")
        try:
            before_kw = await self._measured_power_kw()
            if self.map is not None:
                reason = await self._write_sunspec(self.map, setpoint.power_kw)
            else:
                reason = await self._write_register_map(setpoint.power_kw)
            if reason:
                return refused(reason)
            return await self._await_power(setpoint, before_kw)
        except DeviceRefusedError as err:
            log.info("%s", err)
            return refused("refused")
        except PayloadError as err:
            return refused(err.reason)
        except AdapterError as err:
            self.last_error = str(err)
            return refused("timeout" if isinstance(err.__cause__, TimeoutError) else "io_error")

    async def _write_sunspec(self, found: _SunSpecMap, power_kw: float) -> str:
        if found.controls is None:
            return "not_controllable"
        layout = sunspec.layout(sunspec.DER_CONTROLS_MODEL)
        registers = await self._read_model(found.controls)
        wset = layout.point("WSet")
        exponent = sunspec.scale_exponent(registers, layout, wset)
        sign = -1.0 if self.conn.sunspec_discharge_positive else 1.0
        words = (
            sunspec.encode_raw(layout.symbol("WSetEna", "ENABLED"), layout.point("WSetEna"))
            + sunspec.encode_raw(layout.symbol("WSetMod", "WATTS"), layout.point("WSetMod"))
            + sunspec.encode_scaled(sign * power_kw * 1000.0, exponent, wset)
        )
        start, count = layout.span("WSetEna", "WSetMod", "WSet")
        if count != len(words):
            raise AdapterError(self.adapter, "model 704 WSetEna/WSetMod/WSet are not contiguous")
        await self._write(found.controls.address + start, words)
        back = await self._read(found.controls.address + start, count)
        return "" if back == words else "readback_mismatch"

    async def _write_register_map(self, power_kw: float) -> str:
        register = self._register("setpoint")
        if register is None or not register.writable:
            return "not_controllable"
        words = encode_register(power_kw, register)
        await self._write(register.address, words)
        back = await self._read(register.address, len(words))
        return "" if back == words else "readback_mismatch"

    async def _await_power(self, setpoint: Setpoint, before_kw: float) -> SetpointAck:
        """Accept once the measured power is at, or has moved toward, the setpoint."""
        target = setpoint.power_kw
        tolerance = max(0.5, 0.02 * abs(target))
        start_gap = abs(before_kw - target)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(
            self.conn.ack_timeout_s,
            max((setpoint.valid_until - self.clock.now()).total_seconds(), 0.0),
        )
        measured = await self._measured_power_kw()  # a fast device is already there
        while True:
            gap = abs(measured - target)
            if gap <= tolerance or (start_gap > tolerance and gap <= start_gap - tolerance):
                return SetpointAck(
                    setpoint.correlation_id,
                    setpoint.asset_id,
                    accepted=True,
                    at=self.clock.now(),
                    applied_power_kw=measured,
                )
            if loop.time() >= deadline:
                return SetpointAck(
                    setpoint.correlation_id,
                    setpoint.asset_id,
                    accepted=False,
                    at=self.clock.now(),
                    applied_power_kw=measured,
                    reason="not_following",
                )
            await asyncio.sleep(min(ACK_POLL_S, self.conn.poll_interval_s))
            measured = await self._measured_power_kw()


class ModbusAdapter(Adapter):
    """Polls Modbus TCP devices (SunSpec or register map) and writes their setpoints."""

    def __init__(
        self,
        name: str,
        devices: Sequence[ModbusDevice],
        clock: Clock,
        *,
        reconnect_base_s: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        rng = rng or random.Random()
        self._links: dict[str, _Link] = {}
        for device in devices:
            if device.asset_id in self._links:
                raise ValueError(f"{name}: asset {device.asset_id!r} enrolled twice")
            backoff = Backoff(
                base_s=reconnect_base_s,
                cap_s=device.connection.reconnect_max_s,
                rng=random.Random(rng.random()),
            )
            self._links[device.asset_id] = _Link(
                name, device, clock, backoff, f"{name}:{device.asset_id}"
            )

    @property
    def asset_ids(self) -> frozenset[str]:
        return frozenset(self._links)

    async def run(self, sink: TelemetrySink) -> None:
        async with asyncio.TaskGroup() as group:
            for asset_id, link in self._links.items():
                group.create_task(link.run(sink), name=f"{self.name}:{asset_id}")

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        link = self._links.get(setpoint.asset_id)
        if link is None:
            return SetpointAck(
                setpoint.correlation_id,
                setpoint.asset_id,
                accepted=False,
                at=self.clock.now(),
                reason="unknown_asset",
            )
        return await link.send(setpoint)

    def health(self) -> AdapterHealth:
        links = list(self._links.values())
        connected = sum(link.state == ConnectionState.CONNECTED for link in links)
        if links and connected == len(links):
            state = ConnectionState.CONNECTED
        elif connected or any(link.state == ConnectionState.CONNECTING for link in links):
            state = ConnectionState.CONNECTING
        else:
            state = ConnectionState.DISCONNECTED
        seen = [link.last_message_at for link in links if link.last_message_at is not None]
        errors = [link.last_error for link in links if link.last_error]
        return AdapterHealth(
            name=self.name,
            state=state,
            reconnects=sum(link.reconnects for link in links),
            last_error=errors[-1] if errors else "",
            last_message_at=max(seen) if seen else None,
        )

    def device_health(self, asset_id: str) -> AdapterHealth:
        """The link state of one device."""
        link = self._links[asset_id]
        return AdapterHealth(
            name=f"{self.name}:{asset_id}",
            state=link.state,
            reconnects=link.reconnects,
            last_error=link.last_error,
            last_message_at=link.last_message_at,
        )
