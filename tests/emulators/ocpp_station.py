"""Charge-point emulators built on the real `ocpp` library, for the CSMS adapter's tests.

A station connects to ws://host:port/<id> with the OCPP 1.6 or 2.0.1 subprotocol, boots, and
reports MeterValues on request or periodically. It answers SetChargingProfile with Accepted (and
caps its power at the limit) or Rejected, or not at all, as the test configures it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16 import enums as enums16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201 import enums as enums201
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def handles(action: str) -> Callable[[_Handler], _Handler]:
    """`ocpp.routing.on` with a type (the library ships none)."""
    decorator: Callable[[_Handler], _Handler] = on(action)
    return decorator


@dataclass(slots=True)
class StationBehaviour:
    """What the emulated station does; tests change it while it runs."""

    demand_w: float = 7000.0  # what the EV would draw without a limit
    soc_percent: float = 40.0
    energy_wh: float = 12000.0
    accept_profiles: bool = True
    answer_profiles: bool = True  # False: never answer SetChargingProfile
    voltage_v: float = 230.0
    phases: int = 3
    limit_w: float | None = None
    profiles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def power_w(self) -> float:
        return self.demand_w if self.limit_w is None else min(self.demand_w, self.limit_w)

    def apply(self, unit: str, limit: float) -> None:
        self.limit_w = limit if unit == "W" else limit * self.voltage_v * self.phases


async def _profile_answer(behaviour: StationBehaviour) -> bool:
    if not behaviour.answer_profiles:
        await asyncio.sleep(3600)  # cancelled with the connection
    return behaviour.accept_profiles


class Station16(ChargePoint16):  # type: ignore[misc]
    behaviour: StationBehaviour

    @handles(enums16.Action.set_charging_profile)
    async def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any]
    ) -> Any:
        self.behaviour.profiles.append({"connector_id": connector_id, **cs_charging_profiles})
        accepted = await _profile_answer(self.behaviour)
        if accepted:
            schedule = cs_charging_profiles["charging_schedule"]
            period = schedule["charging_schedule_period"][0]
            self.behaviour.apply(schedule["charging_rate_unit"], float(period["limit"]))
        status = (
            enums16.ChargingProfileStatus.accepted
            if accepted
            else enums16.ChargingProfileStatus.rejected
        )
        return result16.SetChargingProfile(status=status)


class Station201(ChargePoint201):  # type: ignore[misc]
    behaviour: StationBehaviour

    @handles(enums201.Action.set_charging_profile)
    async def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> Any:
        self.behaviour.profiles.append({"evse_id": evse_id, **charging_profile})
        accepted = await _profile_answer(self.behaviour)
        if accepted:
            schedule = charging_profile["charging_schedule"][0]
            period = schedule["charging_schedule_period"][0]
            self.behaviour.apply(schedule["charging_rate_unit"], float(period["limit"]))
        status = (
            enums201.ChargingProfileStatusEnumType.accepted
            if accepted
            else enums201.ChargingProfileStatusEnumType.rejected
        )
        return result201.SetChargingProfile(status=status)


class StationEmulator:
    """One charge point; use `async with StationEmulator(...).running()`."""

    def __init__(
        self,
        url: str,
        cp_id: str,
        version: str,
        behaviour: StationBehaviour | None = None,
        connector_id: int = 1,
    ) -> None:
        self.url = f"{url.rstrip('/')}/{cp_id}"
        self.cp_id = cp_id
        self.version = version
        self.behaviour = behaviour or StationBehaviour()
        self.connector_id = connector_id
        self.websocket: ClientConnection | None = None
        self.point: Station16 | Station201 | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StationEmulator]:
        subprotocol = Subprotocol("ocpp1.6" if self.version == "1.6" else "ocpp2.0.1")
        async with connect(self.url, subprotocols=[subprotocol], open_timeout=5) as websocket:
            self.websocket = websocket
            cls = Station16 if self.version == "1.6" else Station201
            point = cls(self.cp_id, websocket, response_timeout=5)
            point.behaviour = self.behaviour
            self.point = point
            reader = asyncio.create_task(point.start(), name=f"station {self.cp_id}")
            try:
                await self.boot()
                yield self
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    async def boot(self) -> str:
        assert self.point is not None
        if self.version == "1.6":
            response = await self.point.call(
                call16.BootNotification(charge_point_model="EmuCharger", charge_point_vendor="VPP")
            )
        else:
            response = await self.point.call(
                call201.BootNotification(
                    charging_station={"model": "EmuCharger", "vendor_name": "VPP"},
                    reason=enums201.BootReasonEnumType.power_up,
                )
            )
        return str(response.status)

    async def status(self, status: str) -> None:
        assert self.point is not None
        now = datetime.now(UTC).isoformat()
        if self.version == "1.6":
            await self.point.call(
                call16.StatusNotification(
                    connector_id=self.connector_id,
                    error_code=enums16.ChargePointErrorCode.no_error,
                    status=status,
                    timestamp=now,
                )
            )
        else:
            await self.point.call(
                call201.StatusNotification(
                    timestamp=now,
                    connector_status=status,
                    evse_id=self.connector_id,
                    connector_id=1,
                )
            )

    def sampled_values(self) -> list[dict[str, Any]]:
        b = self.behaviour
        if self.version == "1.6":
            return [
                {"value": f"{b.power_w:.1f}", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": f"{b.soc_percent:.1f}", "measurand": "SoC", "unit": "Percent"},
                {
                    "value": f"{b.energy_wh / 1000.0:.3f}",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "kWh",
                },
            ]
        return [
            {
                "value": b.power_w / 1000.0,
                "measurand": "Power.Active.Import",
                "unit_of_measure": {"unit": "W", "multiplier": 3},
            },
            {"value": b.soc_percent, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}},
            {"value": b.energy_wh, "measurand": "Energy.Active.Import.Register"},
        ]

    async def meter_values(
        self,
        sampled: list[dict[str, Any]] | None = None,
        timestamp: datetime | None = None,
        connector_id: int | None = None,
        validate: bool = True,
    ) -> None:
        """Send MeterValues; `validate=False` lets a test send what the schema forbids."""
        assert self.point is not None
        moment = (timestamp or datetime.now(UTC)).isoformat()
        meter_value = [{"timestamp": moment, "sampled_value": sampled or self.sampled_values()}]
        connector = self.connector_id if connector_id is None else connector_id
        if self.version == "1.6":
            payload: Any = call16.MeterValues(connector_id=connector, meter_value=meter_value)
        else:
            payload = call201.MeterValues(evse_id=connector, meter_value=meter_value)
        await self.point.call(payload, skip_schema_validation=not validate)

    async def send_raw(self, frame: str) -> None:
        """Put a frame on the socket as is (garbage, hand-made calls)."""
        assert self.websocket is not None
        await self.websocket.send(frame)
