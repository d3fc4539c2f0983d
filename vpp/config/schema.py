"""Enrollment configuration schema: park, enterprises, assets, connections and engine settings.

Pydantic v2 models with `extra="forbid"`; every bound here is a physical or commercial limit
beyond which a value is a typo, not a plant. Secrets are never in the file: connection fields
ending in `_env` name the environment variable that holds them.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from vpp.domain import AssetKind, FallbackMode

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
SECRET_KEYS = ("password", "token", "secret", "api_key", "apikey", "private_key")

MAX_POWER_KW = 500_000.0  # 500 MW: larger than any single asset a park enrolls
MAX_ENERGY_KWH = 2_000_000.0  # 2 GWh
MAX_PRICE_PER_MWH = 100_000.0

Id = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits, '_', '.', '-'")]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN, description="environment variable name")]
PowerKw = Annotated[float, Field(ge=0, le=MAX_POWER_KW, allow_inf_nan=False)]
PositivePowerKw = Annotated[float, Field(gt=0, le=MAX_POWER_KW, allow_inf_nan=False)]
EnergyKwh = Annotated[float, Field(gt=0, le=MAX_ENERGY_KWH, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Efficiency = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Cost = Annotated[float, Field(ge=0, le=MAX_PRICE_PER_MWH, allow_inf_nan=False)]
Minutes = Annotated[float, Field(ge=0, le=7 * 24 * 60, allow_inf_nan=False)]


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """Monday = 0, as `datetime.weekday()`."""
        return list(Weekday).index(self)


ALL_DAYS = tuple(Weekday)
_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


class TimeWindow(Model):
    """A daily window in local time, written "HH:MM-HH:MM"; it may wrap past midnight."""

    start: time
    end_minute: int = Field(ge=1, le=1440, description="minutes after midnight; 1440 = 24:00")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _WINDOW_RE.match(value.strip())
        if match is None:
            raise ValueError(f"time window {value!r} is not of the form 'HH:MM-HH:MM'")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
            raise ValueError(f"time window {value!r} has an hour or minute out of range")
        if (h1, m1) == (h2, m2):
            raise ValueError(f"time window {value!r} is empty")
        return {"start": time(h1, m1), "end_minute": h2 * 60 + m2 or 1440}

    @property
    def start_minute(self) -> int:
        return self.start.hour * 60 + self.start.minute

    def contains_minute(self, minute_of_day: float) -> bool:
        """Whether a local minute of the day (0 <= m < 1440) falls inside the window."""
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute_of_day < self.end_minute
        return minute_of_day >= self.start_minute or minute_of_day < self.end_minute

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end_minute // 60:02d}:{self.end_minute % 60:02d}"


def _all_day() -> list[TimeWindow]:
    return [TimeWindow.model_validate("00:00-24:00")]


class EnrollmentTerms(Model):
    """What the enterprise agreed to: when the asset may be dispatched and what it is paid."""

    available_hours: list[TimeWindow] = Field(default_factory=_all_day, min_length=1)
    available_days: list[Weekday] = Field(default_factory=lambda: list(ALL_DAYS), min_length=1)
    notice_min: Minutes = 0.0
    max_events_per_day: int | None = Field(default=None, ge=1, le=96)
    max_events_per_month: int | None = Field(default=None, ge=1, le=31 * 96)
    compensation_per_mwh: Cost = 0.0
    capacity_payment_per_kw_month: Annotated[float, Field(ge=0, le=10_000)] = 0.0

    def available_at(self, weekday: int, minute_of_day: float) -> bool:
        if all(day.number != weekday for day in self.available_days):
            return False
        return any(w.contains_minute(minute_of_day) for w in self.available_hours)


class LoadProfile(Model):
    """A daily load shape in kW: 24 hourly or 96 quarter-hourly values, weekday and weekend."""

    weekday_kw: list[Annotated[float, Field(ge=0, le=MAX_POWER_KW, allow_inf_nan=False)]]
    weekend_kw: list[Annotated[float, Field(ge=0, le=MAX_POWER_KW, allow_inf_nan=False)]] | None = (
        None
    )
    noise_fraction: Annotated[float, Field(ge=0, le=0.5)] = 0.03

    @field_validator("weekday_kw", "weekend_kw")
    @classmethod
    def _points(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and len(values) not in (24, 96):
            raise ValueError(f"a daily profile has 24 or 96 points, not {len(values)}")
        return values

    def at(self, weekday: int, minute_of_day: float) -> float:
        """Profile value (kW) at a local weekday (Monday = 0) and minute of the day."""
        values = (
            self.weekend_kw if weekday >= 5 and self.weekend_kw is not None else self.weekday_kw
        )
        index = int(minute_of_day * len(values) // 1440) % len(values)
        return values[index]

    @property
    def peak_kw(self) -> float:
        return max(*self.weekday_kw, *(self.weekend_kw or [0.0]))


# --- connections ------------------------------------------------------------------------------


class _Connection(Model):
    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and key.lower() in SECRET_KEYS:
                    raise ValueError(
                        f"'{key}' must not be written in the file: "
                        f"name its environment variable with '{key}_env'"
                    )
        return value


class SimConnection(_Connection):
    """A simulated device inside the engine, with optional faults for testing the control loop."""

    adapter: Literal["sim"] = "sim"
    telemetry_period_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    response_lag_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    under_delivery_fraction: Fraction = 0.0
    dropout_probability_per_h: Fraction = 0.0
    seed: int | None = None


class MqttConnection(_Connection):
    """An MQTT broker the device (or its enterprise gateway) publishes to."""

    adapter: Literal["mqtt"]
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    topic_prefix: str = Field(default="vpp", pattern=r"^[^#+\s]+$")
    client_id: str | None = None
    username: str | None = None
    password_env: EnvName | None = None
    tls: bool = False
    ca_file: str | None = None
    shared_group: str | None = Field(default=None, pattern=r"^[^/#+\s]+$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    cert_file: str | None = Field(default=None, description="client certificate for mutual TLS")
    key_file: str | None = None
    telemetry_qos: Literal[0, 1] = 1
    ack_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    session_expiry_s: int = Field(
        default=3600, ge=0, le=7 * 24 * 3600, description="persistent session when client_id is set"
    )


class HttpConnection(_Connection):
    """An enterprise energy-management system's REST endpoint."""

    adapter: Literal["http"]
    base_url: str = Field(pattern=r"^https?://[^\s]+$")
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    token_env: EnvName | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    push: bool = False
    poll: bool = Field(default=True, description="GET telemetry every poll_interval_s")
    telemetry_path: str = Field(default="/telemetry", pattern=r"^/[^\s]*$")
    setpoint_path: str = Field(default="/setpoints", pattern=r"^/[^\s]*$")
    push_listen: str | None = Field(
        default=None,
        pattern=r"^[^\s:]+:\d{1,5}$",
        description="host:port where pushed telemetry is accepted when push is true",
    )


class ModbusRegister(Model):
    """One register of a non-SunSpec device map."""

    name: Literal["power", "soc", "temperature", "setpoint", "available"]
    address: int = Field(ge=0, le=65535)
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "int16"
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    writable: bool = False


class ModbusConnection(_Connection):
    """A Modbus TCP device: SunSpec models when `sunspec`, else the register map."""

    adapter: Literal["modbus"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    sunspec: bool = True
    sunspec_base_address: int = Field(default=40000, ge=0, le=65535)
    registers: list[ModbusRegister] = Field(default_factory=list)
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    ack_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=5.0, description="how long the measured power may take to move toward a setpoint"
    )
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    sunspec_discharge_positive: bool = Field(
        default=True, description="SunSpec W and WSet: positive = discharging / injecting"
    )

    @model_validator(mode="after")
    def _map_when_not_sunspec(self) -> ModbusConnection:
        if not self.sunspec and not any(r.name == "power" for r in self.registers):
            raise ValueError("a non-SunSpec Modbus device needs a register map with 'power'")
        return self


class OcppConnection(_Connection):
    """An EV charge point that connects to the engine's OCPP central system."""

    adapter: Literal["ocpp"]
    charge_point_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,48}$")
    version: Literal["1.6", "2.0.1"] = "1.6"
    connector_id: int = Field(default=0, ge=0, le=64)
    charging_rate_unit: Literal["W", "A"] = "W"
    voltage_v: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=230.0, description="phase voltage used to turn a power limit into amperes"
    )
    phases: int = Field(default=3, ge=1, le=3)
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0


class GatewayRef(Model):
    """The asset is reached through one of its enterprise's gateways."""

    gateway: Id
    device_id: str | None = None


def _connection_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "adapter" in value:
            return str(value["adapter"])
        if "gateway" in value:
            return "gateway"
        return "sim"
    return getattr(value, "adapter", "gateway")


Connection = Annotated[
    Annotated[SimConnection, Tag("sim")]
    | Annotated[MqttConnection, Tag("mqtt")]
    | Annotated[HttpConnection, Tag("http")]
    | Annotated[ModbusConnection, Tag("modbus")]
    | Annotated[OcppConnection, Tag("ocpp")]
    | Annotated[GatewayRef, Tag("gateway")],
    Discriminator(
        _connection_tag,
        custom_error_type="unknown_adapter",
        custom_error_message="unknown adapter: expected one of sim, mqtt, http, modbus, ocpp",
    ),
]

GatewayConnection = Annotated[
    Annotated[SimConnection, Tag("sim")]
    | Annotated[MqttConnection, Tag("mqtt")]
    | Annotated[HttpConnection, Tag("http")]
    | Annotated[ModbusConnection, Tag("modbus")]
    | Annotated[OcppConnection, Tag("ocpp")],
    Discriminator(
        _connection_tag,
        custom_error_type="unknown_adapter",
        custom_error_message="unknown adapter: expected one of sim, mqtt, http, modbus, ocpp",
    ),
]


DeviceConnection = (
    SimConnection | MqttConnection | HttpConnection | ModbusConnection | OcppConnection
)


class Gateway(Model):
    """An enterprise gateway that relays telemetry and setpoints for many assets."""

    id: Id
    connection: GatewayConnection


# --- assets -----------------------------------------------------------------------------------


class _Asset(Model):
    id: Id
    name: str = ""
    enterprise: Id | None = Field(
        default=None, description="required for assets listed at park level"
    )
    terms: EnrollmentTerms = Field(default_factory=EnrollmentTerms)
    connection: Connection = Field(default_factory=SimConnection)
    fallback: FallbackMode | None = None
    safe_power_kw: Annotated[float, Field(ge=-MAX_POWER_KW, le=MAX_POWER_KW)] | None = None
    meter_id: str | None = None


class BatteryAsset(_Asset):
    """Battery energy storage: charge is positive power, discharge negative."""

    kind: Literal[AssetKind.BATTERY]
    power_kw: PositivePowerKw
    charge_power_kw: PositivePowerKw | None = None
    capacity_kwh: EnergyKwh
    soc_min: Fraction = 0.1
    soc_max: Fraction = 0.9
    soc_initial: Fraction = 0.5
    charge_efficiency: Efficiency = 0.95
    discharge_efficiency: Efficiency = 0.95
    degradation_cost_per_mwh: Cost = 0.0
    ramp_kw_per_s: Annotated[float, Field(gt=0, le=MAX_POWER_KW)] | None = None

    @model_validator(mode="after")
    def _soc_order(self) -> BatteryAsset:
        if not self.soc_min < self.soc_max:
            raise ValueError(f"soc_min {self.soc_min} must be below soc_max {self.soc_max}")
        if not self.soc_min <= self.soc_initial <= self.soc_max:
            raise ValueError(
                f"soc_initial {self.soc_initial} must lie within [{self.soc_min}, {self.soc_max}]"
            )
        return self

    @property
    def max_charge_kw(self) -> float:
        return self.charge_power_kw if self.charge_power_kw is not None else self.power_kw

    @property
    def usable_energy_kwh(self) -> float:
        return self.capacity_kwh * (self.soc_max - self.soc_min)


class PvAsset(_Asset):
    """Photovoltaic array: generation is negative power; curtailment reduces it."""

    kind: Literal[AssetKind.PV]
    capacity_kwp: PositivePowerKw
    inverter_kw: PositivePowerKw | None = None
    tilt_deg: Annotated[float, Field(ge=0, le=90)] = 20.0
    azimuth_deg: Annotated[float, Field(ge=0, lt=360)] = 180.0
    performance_ratio: Annotated[float, Field(gt=0, le=1)] = 0.82
    curtailable: bool = True
    curtailment_cost_per_mwh: Cost = 0.0

    @property
    def max_output_kw(self) -> float:
        return self.inverter_kw if self.inverter_kw is not None else self.capacity_kwp


class CurtailableLoad(_Asset):
    """A process load that can be reduced for a while, at a cost, possibly with a rebound."""

    kind: Literal[AssetKind.CURTAILABLE_LOAD]
    profile: LoadProfile
    max_reduction_kw: PositivePowerKw
    max_duration_min: Annotated[float, Field(gt=0, le=24 * 60)] = 120.0
    min_rest_min: Minutes = 0.0
    rebound_fraction: Annotated[float, Field(ge=0, le=2)] = 0.0
    rebound_window_min: Annotated[float, Field(gt=0, le=24 * 60)] = 60.0
    cost_per_mwh: Cost = 0.0

    @model_validator(mode="after")
    def _reduction_within_load(self) -> CurtailableLoad:
        if self.max_reduction_kw > self.profile.peak_kw:
            raise ValueError(
                f"max_reduction_kw {self.max_reduction_kw} exceeds the profile's peak "
                f"{self.profile.peak_kw} kW"
            )
        return self


class ShiftableLoad(_Asset):
    """A batch load that must run a given energy per day within allowed windows."""

    kind: Literal[AssetKind.SHIFTABLE_LOAD]
    power_kw: PositivePowerKw
    energy_per_run_kwh: EnergyKwh
    runs_per_day: int = Field(default=1, ge=1, le=96)
    windows: list[TimeWindow] = Field(default_factory=_all_day, min_length=1)
    interruptible: bool = False
    default_start: time | None = Field(
        default=None, description="when local control starts the run; default: window start"
    )

    @property
    def run_duration_h(self) -> float:
        return self.energy_per_run_kwh / self.power_kw

    @model_validator(mode="after")
    def _run_fits(self) -> ShiftableLoad:
        lengths = [(w.end_minute - w.start_minute) % 1440 or 1440 for w in self.windows]
        run_min = self.run_duration_h * 60
        if run_min * self.runs_per_day > sum(lengths):
            raise ValueError(
                f"{self.runs_per_day} run(s) of {self.energy_per_run_kwh} kWh "
                f"at {self.power_kw} kW "
                "do not fit in the allowed windows"
            )
        if not self.interruptible and run_min > max(lengths):
            raise ValueError(
                f"an uninterruptible run of {run_min:.0f} min is longer than "
                f"the longest window ({max(lengths)} min)"
            )
        return self


class ThermalLoad(_Asset):
    """HVAC or cold storage: a first-order thermal model kept inside a temperature band."""

    kind: Literal[AssetKind.THERMAL_LOAD]
    mode: Literal["cooling", "heating"] = "cooling"
    rated_power_kw: PositivePowerKw
    cop: Annotated[float, Field(gt=0, le=10)] = 3.0
    thermal_capacity_kwh_per_k: Annotated[float, Field(gt=0, le=1_000_000)]
    loss_kw_per_k: Annotated[float, Field(gt=0, le=100_000)]
    temp_min_c: Annotated[float, Field(ge=-60, le=80)]
    temp_max_c: Annotated[float, Field(ge=-60, le=80)]
    temp_initial_c: Annotated[float, Field(ge=-60, le=80)] | None = None
    ambient_c: Annotated[float, Field(ge=-50, le=60)] = 30.0
    internal_gain_kw: Annotated[float, Field(ge=0, le=MAX_POWER_KW)] = 0.0

    @model_validator(mode="after")
    def _band(self) -> ThermalLoad:
        if not self.temp_min_c < self.temp_max_c:
            raise ValueError(
                f"temp_min_c {self.temp_min_c} must be below temp_max_c {self.temp_max_c}"
            )
        if self.temp_initial_c is not None and not (
            self.temp_min_c <= self.temp_initial_c <= self.temp_max_c
        ):
            raise ValueError("temp_initial_c must lie within the temperature band")
        holding = self.holding_power_kw
        if holding > self.rated_power_kw:
            raise ValueError(
                f"rated_power_kw {self.rated_power_kw} cannot hold the band against losses: "
                f"{holding:.1f} kW needed at ambient {self.ambient_c} °C"
            )
        return self

    @property
    def initial_temp_c(self) -> float:
        if self.temp_initial_c is not None:
            return self.temp_initial_c
        return (self.temp_min_c + self.temp_max_c) / 2

    @property
    def holding_power_kw(self) -> float:
        """Electric power that holds the band's midpoint against losses and internal gains."""
        mid = (self.temp_min_c + self.temp_max_c) / 2
        if self.mode == "cooling":
            heat_kw = self.loss_kw_per_k * (self.ambient_c - mid) + self.internal_gain_kw
        else:
            heat_kw = self.loss_kw_per_k * (mid - self.ambient_c) - self.internal_gain_kw
        return max(heat_kw, 0.0) / self.cop

    @property
    def storable_energy_kwh(self) -> float:
        """Electric energy equivalent of moving across the whole band."""
        return self.thermal_capacity_kwh_per_k * (self.temp_max_c - self.temp_min_c) / self.cop


class EvSession(Model):
    """One known charging session (from a booking or a fleet timetable)."""

    arrival: time
    departure: time
    energy_kwh: EnergyKwh


class EvArrivalProfile(Model):
    """Statistical arrivals: expected vehicles per hour of the day and their needs."""

    arrivals_per_hour: list[Annotated[float, Field(ge=0, le=1000)]]
    mean_energy_kwh: EnergyKwh
    mean_dwell_h: Annotated[float, Field(gt=0, le=72)]

    @field_validator("arrivals_per_hour")
    @classmethod
    def _hours(cls, values: list[float]) -> list[float]:
        if len(values) != 24:
            raise ValueError(f"arrivals_per_hour has 24 values, not {len(values)}")
        return values


class EvCharging(_Asset):
    """An EV charging depot: chargers, and sessions or a statistical arrival profile."""

    kind: Literal[AssetKind.EV_CHARGING]
    chargers: int = Field(ge=1, le=10_000)
    charger_power_kw: PositivePowerKw
    station_limit_kw: PositivePowerKw | None = None
    sessions: list[EvSession] = Field(default_factory=list)
    arrival_profile: EvArrivalProfile | None = None
    v2g: bool = False

    @model_validator(mode="after")
    def _demand_known(self) -> EvCharging:
        if not self.sessions and self.arrival_profile is None:
            raise ValueError("an EV depot needs 'sessions' or an 'arrival_profile'")
        if self.charger_power_kw * self.chargers > MAX_POWER_KW:
            raise ValueError("chargers × charger_power_kw is beyond any depot")
        return self

    @property
    def max_power_kw(self) -> float:
        total = self.chargers * self.charger_power_kw
        return min(total, self.station_limit_kw) if self.station_limit_kw is not None else total


class Generator(_Asset):
    """A backup generator or CHP: output is negative power between min and max when running."""

    kind: Literal[AssetKind.GENERATOR]
    fuel: Literal["diesel", "natural_gas", "biogas", "hydrogen"] = "natural_gas"
    min_kw: PowerKw = 0.0
    max_kw: PositivePowerKw
    ramp_kw_per_min: Annotated[float, Field(gt=0, le=MAX_POWER_KW)] | None = None
    fuel_cost_per_mwh: Cost
    startup_cost: Annotated[float, Field(ge=0, le=1_000_000)] = 0.0
    emission_kg_per_kwh: Annotated[float, Field(ge=0, le=3)]
    fuel_kwh_per_kwh: Annotated[float, Field(ge=1, le=10)] = 2.5
    min_up_min: Minutes = 0.0

    @model_validator(mode="after")
    def _range(self) -> Generator:
        if self.min_kw > self.max_kw:
            raise ValueError(f"min_kw {self.min_kw} exceeds max_kw {self.max_kw}")
        return self


Asset = Annotated[
    BatteryAsset | PvAsset | CurtailableLoad | ShiftableLoad | ThermalLoad | EvCharging | Generator,
    Field(discriminator="kind"),
]


# --- enterprise and park ----------------------------------------------------------------------


class Contact(Model):
    name: str
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = None


class Meter(Model):
    id: str
    ct_ratio: Annotated[float, Field(gt=0, le=100_000)] = 1.0


class Enterprise(Model):
    id: Id
    name: str
    industry: str = ""
    connection_limit_kw: PositivePowerKw
    export_limit_kw: PowerKw = 0.0
    meter: Meter | None = None
    contact: Contact | None = None
    gateways: list[Gateway] = Field(default_factory=list)
    assets: list[Asset] = Field(default_factory=list)

    def route(self, asset: AnyAsset) -> Route:
        """How the engine reaches `asset`: its own connection, or that of the gateway it names."""
        connection = asset.connection
        if not isinstance(connection, GatewayRef):
            return Route(connection, asset.id, asset.id)
        for gateway in self.gateways:
            if gateway.id == connection.gateway:
                return Route(gateway.connection, gateway.id, connection.device_id or asset.id)
        raise KeyError(f"asset {asset.id!r} names unknown gateway {connection.gateway!r}")


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved connection: the peer's settings, the endpoint (gateway or asset) and the
    id the device or gateway uses for the asset."""

    connection: DeviceConnection
    endpoint_id: str
    device_id: str


class Location(Model):
    latitude_deg: Annotated[float, Field(ge=-90, le=90)]
    longitude_deg: Annotated[float, Field(ge=-180, le=180)]
    altitude_m: Annotated[float, Field(ge=-500, le=9000)] = 0.0


class CarbonSettings(Model):
    grid_emission_factor_kg_per_kwh: Annotated[float, Field(ge=0, le=2)] = 0.5306
    grid_emission_series: str | None = Field(
        default=None, description="CSV timestamp,kg_per_kwh, relative to the config file"
    )
    green_certificates_mwh_per_year: Annotated[float, Field(ge=0, le=1e7)] = 0.0


class MarketParticipation(Model):
    rule_set: Id
    dr_product: Id | None = None
    node: str | None = None


class EngineSettings(Model):
    market_interval_min: Literal[5, 15, 30, 60] = 15
    horizon_h: int = Field(default=24, ge=1, le=168)
    control_period_s: Annotated[float, Field(ge=0.1, le=300)] = 2.0
    telemetry_stale_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    setpoint_validity_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    degraded_after_cycles: int = Field(default=3, ge=1, le=1000)
    fallback: FallbackMode = FallbackMode.RELEASE
    solver_time_limit_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    mip_gap: Annotated[float, Field(ge=0, le=0.5)] = 0.001
    listen: str = Field(
        default="127.0.0.1:8080", pattern=r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$"
    )
    ocpp_listen: str = Field(
        default="127.0.0.1:9000", pattern=r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$"
    )
    ocpp_heartbeat_s: int = Field(default=60, ge=5, le=86_400)
    storage_url: str = Field(default="sqlite:///vpp.db", pattern=r"^(sqlite|postgresql)://")
    ingest_queue_size: int = Field(default=100_000, ge=100, le=10_000_000)
    # A Dask scheduler whose workers solve the parts of a decomposed dispatch (None: threads
    # of the engine's own process). See docs/dispatch.md, "Fan-out".
    dispatch_scheduler: str | None = Field(
        default=None, pattern=r"^(tcp|tls|ws|wss)://([^\s:/\[\]]+|\[[0-9a-fA-F:]+\]):\d{1,5}$"
    )

    @field_validator("storage_url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        credentials = value.split("://", 1)[1].split("@", 1)[0] if "@" in value else ""
        if ":" in credentials:
            raise ValueError(
                "a password must not be written in storage_url: use PGPASSWORD, a libpq "
                "passfile or the VPP_STORAGE_URL environment variable"
            )
        return value

    @field_validator("listen", "ocpp_listen", "dispatch_scheduler")
    @classmethod
    def _port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        port = int(value.rsplit(":", 1)[1])
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
        return value


class Park(Model):
    id: Id
    name: str
    timezone: str = "Asia/Shanghai"
    location: Location
    grid_import_limit_kw: PositivePowerKw
    grid_export_limit_kw: PowerKw = 0.0
    carbon: CarbonSettings = Field(default_factory=CarbonSettings)
    market: MarketParticipation
    engine: EngineSettings = Field(default_factory=EngineSettings)
    enterprises: list[Enterprise] = Field(min_length=1)
    assets: list[Asset] = Field(
        default_factory=list, description="assets enrolled at park level; each names its enterprise"
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown timezone {value!r}") from err
        return value

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def iter_assets(self) -> list[tuple[Enterprise, AnyAsset]]:
        """Every asset with its enterprise, nested ones first, in file order."""
        by_id = {e.id: e for e in self.enterprises}
        pairs: list[tuple[Enterprise, AnyAsset]] = [
            (enterprise, asset) for enterprise in self.enterprises for asset in enterprise.assets
        ]
        pairs.extend((by_id[a.enterprise], a) for a in self.assets if a.enterprise in by_id)
        return pairs

    def asset(self, asset_id: str) -> AnyAsset:
        for _, asset in self.iter_assets():
            if asset.id == asset_id:
                return asset
        raise KeyError(asset_id)


AnyAsset = (
    BatteryAsset | PvAsset | CurtailableLoad | ShiftableLoad | ThermalLoad | EvCharging | Generator
)
