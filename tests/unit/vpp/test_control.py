"""The control loop against an in-process plant of first-order devices on a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from adapters.sim import PvModel, SimAdapter
from vpp.assets import static_limits
from vpp.backtest import SteppedClock
from vpp.clock import ManualClock
from vpp.config.schema import BatteryAsset, Park
from vpp.control import Controller, ControlOptions, CycleReport
from vpp.domain import Availability, Measurement, Setpoint, SetpointAck
from vpp.fleet import Fleet
from vpp.limits import asset_limits
from vpp.metrics import Metrics
from vpp.targets import TargetBook

# Wednesday 2024-01-03 10:00 in Shanghai.
START = datetime(2024, 1, 3, 2, 0, tzinfo=UTC)
PERIOD_S = 2.0


def battery(asset_id: str, power_kw: float = 100.0, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": asset_id,
        "kind": "battery",
        "power_kw": power_kw,
        "capacity_kwh": 2000,
    }
    spec.update(extra)
    return spec


def make_park(assets: list[dict[str, Any]], **engine: Any) -> Park:
    return Park.model_validate(
        {
            "id": "t",
            "name": "test park",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 100_000,
            "market": {"rule_set": "cn_provincial_spot"},
            "engine": {"control_period_s": PERIOD_S, **engine},
            "enterprises": [
                {"id": "e", "name": "E", "connection_limit_kw": 100_000, "assets": assets}
            ],
        }
    )


@dataclass
class Device:
    power_kw: float = 0.0
    command_kw: float | None = None
    soc: float | None = None
    temperature_c: float | None = None
    follows: bool = True  # False: acks but ignores setpoints
    acks: bool = True  # False: never answers
    reports: bool = True  # False: telemetry stopped


@dataclass
class Plant(Adapter):
    """Devices that move toward their setpoint by `response` of the gap per period."""

    park: Park
    clock: ManualClock
    response: float = 1.0
    name: str = "plant"
    devices: dict[str, Device] = field(default_factory=dict)
    received: list[Setpoint] = field(default_factory=list)
    gate: asyncio.Event | None = None

    def __post_init__(self) -> None:
        for _, asset in self.park.iter_assets():
            soc = asset.soc_initial if isinstance(asset, BatteryAsset) else None
            self.devices.setdefault(asset.id, Device(soc=soc))

    @property
    def asset_ids(self) -> frozenset[str]:
        return frozenset(self.devices)

    async def run(self, sink: TelemetrySink) -> None:  # pragma: no cover - driven by tests
        await asyncio.Event().wait()

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        if self.gate is not None:
            await self.gate.wait()
        self.received.append(setpoint)
        device = self.devices[setpoint.asset_id]
        if device.follows:
            device.command_kw = setpoint.power_kw
        if not device.acks:
            await asyncio.Event().wait()
        return SetpointAck(
            setpoint.correlation_id,
            setpoint.asset_id,
            True,
            self.clock.now(),
            applied_power_kw=setpoint.power_kw,
        )

    def health(self) -> AdapterHealth:
        return AdapterHealth(self.name, ConnectionState.CONNECTED)

    def step(self, seconds: float) -> None:
        for device in self.devices.values():
            if device.command_kw is not None:
                device.power_kw += self.response * (device.command_kw - device.power_kw)
            if device.soc is not None:
                device.soc = min(max(device.soc + device.power_kw * seconds / 3600 / 2000, 0), 1)

    def publish(self, sink: TelemetrySink) -> None:
        now = self.clock.now()
        batch = [
            Measurement(aid, now, d.power_kw, soc_fraction=d.soc, temperature_c=d.temperature_c)
            for aid, d in self.devices.items()
            if d.reports
        ]
        sink.accept(self.name, batch)


@dataclass
class Rig:
    park: Park
    clock: ManualClock
    fleet: Fleet
    plant: Plant
    targets: TargetBook
    metrics: Metrics
    controller: Controller

    async def cycles(self, count: int) -> list[CycleReport]:
        """Physics over a period, telemetry, then one control cycle and its sends."""
        reports = []
        for _ in range(count):
            self.plant.step(PERIOD_S)
            self.plant.publish(self.fleet)
            await self.tick(PERIOD_S)
            assert self.controller.last_report is not None
            reports.append(self.controller.last_report)
        return reports

    async def tick(self, seconds: float, *, idle: bool = True) -> None:
        """Advance the clock, wait for the cycle it triggers and, if `idle`, for its sends."""
        done = self.controller.cycles_run
        await self.clock.advance(seconds)
        await asyncio.wait_for(self.controller.wait_cycle(done), 5)
        if idle:
            await asyncio.wait_for(self.controller.wait_idle(), 5)

    async def override(self, power_kw: float, *, idle: bool = True) -> None:
        """Set the target; the loop runs a cycle at once (and, if `idle`, sends)."""
        done = self.controller.cycles_run
        now = self.clock.now()
        self.targets.set_override(power_kw, now, now + timedelta(hours=1))
        await asyncio.wait_for(self.controller.wait_cycle(done), 5)
        if idle:
            await asyncio.wait_for(self.controller.wait_idle(), 5)

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def rig(
    assets: list[dict[str, Any]],
    *,
    options: ControlOptions | None = None,
    response: float = 1.0,
    **engine: Any,
) -> AsyncIterator[Rig]:
    park = make_park(assets, **engine)
    clock = ManualClock(START)
    metrics = Metrics()
    fleet = Fleet(park, clock, metrics=metrics)
    plant = Plant(park, clock, response=response)
    targets = TargetBook()
    routes = dict.fromkeys(plant.asset_ids, plant)
    controller = Controller(
        park, fleet, routes, clock, metrics, targets, options=options or ControlOptions()
    )
    task = asyncio.create_task(controller.run(), name="controller-under-test")
    await asyncio.sleep(0)
    try:
        yield Rig(park, clock, fleet, plant, targets, metrics, controller)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


BATTERIES = [battery(f"b{i:02d}") for i in range(20)]  # 20 x ±100 kW


async def test_follows_a_stepped_target_within_two_cycles() -> None:
    async with rig(BATTERIES) as r:
        await r.override(0.0)
        await r.cycles(3)
        await r.override(1200.0)
        reports = await r.cycles(4)
        # Cycle 1 sends the split, the devices move, cycle 2 measures it.
        assert abs(reports[1].measured_kw - 1200.0) < 1.0
        assert all(abs(rep.measured_kw - 1200.0) < 1.0 for rep in reports[1:])
        await r.override(-1500.0)
        reports = await r.cycles(3)
        assert abs(reports[1].measured_kw + 1500.0) < 1.0
        assert r.counter("vpp_target_power_kw") == -1500.0
        assert abs(r.counter("vpp_tracking_error_kw")) < 1.0
        assert r.counter("vpp_control_cycle_duration_seconds_count") >= 10


async def test_beyond_the_fleet_every_asset_saturates() -> None:
    async with rig(BATTERIES[:3]) as r:
        await r.override(1000.0)
        reports = await r.cycles(3)
        assert reports[-1].saturated
        assert reports[-1].measured_kw == pytest.approx(300.0)
        assert all(sp.power_kw <= 100.0 for sp in r.plant.received)


async def test_setpoints_carry_their_validity() -> None:
    async with rig(BATTERIES[:2], setpoint_validity_s=7) as r:
        await r.override(50.0)
        await r.cycles(2)
        assert r.plant.received
        for sp in r.plant.received:
            assert sp.valid_until - sp.issued_at == timedelta(seconds=7)
        assert len({sp.correlation_id for sp in r.plant.received}) == len(r.plant.received)


async def test_unchanged_setpoints_are_resent_before_they_expire() -> None:
    async with rig(BATTERIES[:1], setpoint_validity_s=8) as r:
        await r.override(40.0)
        await r.cycles(8)  # 16 s: the 40 kW setpoint is refreshed every 4 s
        times = [sp.issued_at for sp in r.plant.received]
        assert len(times) >= 4
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert max(gaps) <= 8 - PERIOD_S


async def test_cheaper_assets_move_first() -> None:
    cheap = [battery(f"cheap{i}", terms={"compensation_per_mwh": 10}) for i in range(2)]
    dear = [battery(f"dear{i}", terms={"compensation_per_mwh": 90}) for i in range(2)]
    async with rig(cheap + dear) as r:
        await r.override(150.0)
        await r.cycles(3)
        power = {aid: d.power_kw for aid, d in r.plant.devices.items()}
        assert power["cheap0"] == pytest.approx(75.0)
        assert power["cheap1"] == pytest.approx(75.0)
        assert power["dear0"] == pytest.approx(0.0)
        await r.override(300.0)
        await r.cycles(3)
        assert r.plant.devices["dear1"].power_kw == pytest.approx(50.0)


async def test_asset_that_does_not_follow_is_degraded_and_its_share_redispatched() -> None:
    async with rig(BATTERIES[:10], degraded_after_cycles=3) as r:
        await r.override(0.0)
        await r.cycles(2)
        for aid in ("b00", "b01"):
            r.plant.devices[aid].follows = False
        await r.override(600.0)
        reports = await r.cycles(8)
        assert r.fleet.availability("b00") is Availability.DEGRADED
        assert r.fleet.availability("b01") is Availability.DEGRADED
        assert r.fleet.availability("b02") is Availability.AVAILABLE
        # Degraded after 3 assessed cycles; the share moves within the next two.
        recovered = next(k for k, rep in enumerate(reports) if abs(rep.measured_kw - 600) < 6.0)
        assert recovered <= 6
        assert all(abs(rep.measured_kw - 600.0) < 6.0 for rep in reports[recovered:])
        sent_after = [sp for sp in r.plant.received[-20:] if sp.asset_id in ("b00", "b01")]
        assert not sent_after
        assert reports[-1].degraded == 2


async def test_missing_acks_degrade_the_asset() -> None:
    options = ControlOptions(send_timeout_s=0.05)
    async with rig(BATTERIES[:4], options=options, degraded_after_cycles=2) as r:
        r.plant.devices["b03"].acks = False
        await r.override(200.0)
        await r.cycles(6)
        assert r.fleet.availability("b03") is Availability.DEGRADED
        assert r.counter("vpp_setpoints_refused_total", adapter="plant", reason="timeout") >= 2
        # Its draw now counts as uncontrolled; the park still meets its target.
        assert sum(d.power_kw for d in r.plant.devices.values()) == pytest.approx(200.0, abs=1.0)
        mark = len(r.plant.received)
        await r.cycles(4)
        assert all(sp.asset_id != "b03" for sp in r.plant.received[mark:])


async def test_degraded_asset_is_readmitted_after_probation() -> None:
    options = ControlOptions(probation_s=10.0)
    async with rig(BATTERIES[:4], options=options, degraded_after_cycles=2) as r:
        r.plant.devices["b00"].follows = False
        await r.override(200.0)
        await r.cycles(4)
        assert r.fleet.availability("b00") is Availability.DEGRADED
        r.plant.devices["b00"].follows = True
        await r.cycles(6)  # 12 s > probation
        assert r.fleet.availability("b00") is Availability.AVAILABLE
        # Re-admitted: it takes its part of the next change again.
        before = r.plant.devices["b00"].power_kw
        await r.override(300.0)
        await r.cycles(2)
        assert r.plant.devices["b00"].power_kw > before + 10.0


async def test_stale_telemetry_drives_each_asset_to_its_fallback() -> None:
    assets = [
        battery("hold", fallback="hold"),
        battery("release", fallback="release"),
        battery("safe", fallback="safe", safe_power_kw=-20),
        battery("b1"),
    ]
    options = ControlOptions(max_hold_s=8.0)
    async with rig(assets, options=options, telemetry_stale_s=5, setpoint_validity_s=4) as r:
        await r.override(200.0)
        await r.cycles(3)
        held = r.plant.devices["hold"].command_kw
        assert held is not None
        for aid in ("hold", "release", "safe"):
            r.plant.devices[aid].reports = False
        mark = len(r.plant.received)
        await r.cycles(12)  # 24 s: stale after 5 s, hold ends 8 s later
        after = r.plant.received[mark:]
        hold_sent = [sp for sp in after if sp.asset_id == "hold"]
        assert hold_sent
        assert all(sp.power_kw == held for sp in hold_sent)
        stale_at = START + timedelta(seconds=6 * PERIOD_S + 5)
        assert max(sp.issued_at for sp in hold_sent) <= stale_at + timedelta(seconds=8 + 2)
        release_sent = [sp for sp in after if sp.asset_id == "release"]
        assert all(sp.issued_at <= stale_at for sp in release_sent)
        safe_sent = [sp for sp in after if sp.asset_id == "safe"]
        assert safe_sent[-1].power_kw == -20.0
        assert r.plant.devices["safe"].command_kw == -20.0
        for mode in ("hold", "release", "safe"):
            assert r.counter("vpp_fallbacks_total", mode=mode) == 1.0
        # The one asset left follows the target alone as far as it can.
        assert r.plant.devices["b1"].power_kw == pytest.approx(100.0)


async def test_telemetry_going_stale_or_coming_back_does_not_wind_up_the_integral() -> None:
    # Three of ten batteries stop reporting, then report again: the measured sum jumps by
    # their 90 kW each time. Devices move half-way to their setpoint per period, so the
    # others need a few cycles to take over; that lag is no shortfall to integrate.
    silent = ("b00", "b01", "b02")
    async with rig(BATTERIES[:10], response=0.5, telemetry_stale_s=5) as r:
        await r.override(300.0)
        await r.cycles(15)
        jump_kw = sum(r.plant.devices[aid].power_kw for aid in silent)
        assert jump_kw == pytest.approx(90.0, abs=5.0)
        for aid in silent:
            r.plant.devices[aid].reports = False
        outage = [rep.measured_kw - 300.0 for rep in await r.cycles(16)]
        assert min(outage) < -0.9 * jump_kw  # they did drop out of the sum at once
        for aid in silent:
            r.plant.devices[aid].reports = True
        back = [rep.measured_kw - 300.0 for rep in await r.cycles(16)]
        assert max(back) > 0.9 * jump_kw
        # Before, the integral took the lag for a shortfall: +17 kW after the outage, -16 kW
        # after the return, each unwinding over ten cycles and more.
        assert max(outage) < 0.05 * jump_kw, outage
        assert min(back) > -0.05 * jump_kw, back
        assert abs(outage[-1]) < 3.0 and abs(back[-1]) < 3.0


async def test_expired_setpoints_are_dropped_never_sent_late() -> None:
    options = ControlOptions(max_in_flight_per_adapter=1, send_timeout_s=30)
    async with rig(BATTERIES[:3], options=options, setpoint_validity_s=3) as r:
        r.plant.gate = asyncio.Event()
        await r.override(150.0)
        r.plant.publish(r.fleet)
        await r.tick(PERIOD_S, idle=False)  # three setpoints queued; one is in flight
        r.targets.clear_override()  # so that no newer setpoint replaces the queued ones
        await r.tick(4.0, idle=False)  # all three are now past their validity
        r.plant.gate.set()
        await asyncio.wait_for(r.controller.wait_idle(), 5)
        assert r.counter("vpp_setpoints_expired_total") >= 2
        for sp in r.plant.received:
            assert sp.issued_at >= START + timedelta(seconds=PERIOD_S)
        # Only the one already handed to the adapter went out.
        assert len(r.plant.received) == r.controller.sent


async def test_setpoint_is_clamped_to_the_limits_in_force_when_it_leaves() -> None:
    # Enrolled until 10:31 local; the cycle at 10:30:58 queues, the send happens after 10:31.
    terms = {"available_hours": ["00:00-10:31"]}
    options = ControlOptions(max_in_flight_per_adapter=1, send_timeout_s=30)
    assets = [battery("x0", terms=terms), battery("x1", terms=terms)]
    async with rig(assets, options=options, setpoint_validity_s=30) as r:
        await r.override(100.0)
        await r.tick(30 * 60 + 56)  # 10:30:56 local
        r.plant.gate = asyncio.Event()
        r.plant.publish(r.fleet)
        await r.tick(PERIOD_S, idle=False)  # 10:30:58: x0 is in flight (held), x1 waits
        report = r.controller.last_report
        assert report is not None
        assert report.setpoints == 2
        await r.tick(PERIOD_S, idle=False)  # 10:31:00: both outside their hours, at 0 kW
        r.plant.gate.set()
        await asyncio.wait_for(r.controller.wait_idle(), 5)
        assert r.counter("vpp_setpoints_clamped_total") == 1
        by_asset = {sp.asset_id: sp.power_kw for sp in r.plant.received}
        assert by_asset == {"x0": 50.0, "x1": 0.0}


async def test_no_target_sends_nothing() -> None:
    async with rig(BATTERIES[:3]) as r:
        reports = await r.cycles(3)
        assert r.plant.received == []
        assert reports[-1].target_kw is None
        assert reports[-1].controllable == 3


async def test_planned_assets_start_from_their_plan() -> None:
    async with rig(BATTERIES[:2]) as r:
        now = r.clock.now()
        # b01 is planned to charge at 80 kW this hour, b00 to idle.
        r.controller.set_plan(now, timedelta(hours=1), {"b01": [80.0], "b00": [0.0]})
        await r.override(80.0)
        await r.cycles(2)
        assert r.plant.devices["b01"].power_kw == pytest.approx(80.0)
        assert r.plant.devices["b00"].power_kw == pytest.approx(0.0)
        # 20 kW more than planned: shared by headroom (100 and 20 kW) in their cost tier.
        await r.override(100.0)
        await r.cycles(2)
        assert r.plant.devices["b00"].power_kw == pytest.approx(20 * 100 / 120)
        assert r.plant.devices["b01"].power_kw == pytest.approx(80 + 20 * 20 / 120)
        # Past the plan's end the assets start from where they are again.
        r.controller.set_plan(now - timedelta(hours=2), timedelta(hours=1), {"b01": [0.0]})
        await r.override(40.0)
        await r.cycles(2)
        split = (r.plant.devices["b00"].power_kw, r.plant.devices["b01"].power_kw)
        # 60 kW less, taken by headroom down (116.7 and 183.3 kW).
        assert split == pytest.approx(
            (100 / 6 - 60 * (100 / 6 + 100) / 300, 500 / 6 - 60 * (500 / 6 + 100) / 300)
        )
        with pytest.raises(ValueError, match="unknown asset"):
            r.controller.set_plan(now, timedelta(hours=1), {"nope": [1.0]})


# --- property: no setpoint ever leaves outside its asset's limits ---------------------------

MIXED = [
    battery("bat", power_kw=300, charge_power_kw=200, ramp_kw_per_s=40),
    {"id": "pv", "kind": "pv", "capacity_kwp": 500},
    {
        "id": "load",
        "kind": "curtailable_load",
        "profile": {"weekday_kw": [300.0] * 24},
        "max_reduction_kw": 120,
    },
    {
        "id": "cold",
        "kind": "thermal_load",
        "rated_power_kw": 150,
        "cop": 2.5,
        "thermal_capacity_kwh_per_k": 0.2,
        "loss_kw_per_k": 4,
        "temp_min_c": -22,
        "temp_max_c": -16,
        "ambient_c": 25,
    },
    {
        "id": "ev",
        "kind": "ev_charging",
        "chargers": 4,
        "charger_power_kw": 50,
        "sessions": [{"arrival": "08:00", "departure": "17:00", "energy_kwh": 100}],
    },
    {
        "id": "gen",
        "kind": "generator",
        "min_kw": 100,
        "max_kw": 400,
        "ramp_kw_per_min": 600,
        "fuel_cost_per_mwh": 900,
        "emission_kg_per_kwh": 0.55,
    },
]
MIXED_PARK = make_park(MIXED)


async def _one_cycle(
    powers: Sequence[float], soc: float, temp: float, target_kw: float
) -> tuple[list[Setpoint], dict[str, Measurement]]:
    async with rig(MIXED, options=ControlOptions(send_timeout_s=1)) as r:
        states = dict(zip([a["id"] for a in MIXED], powers, strict=True))
        for aid, power in states.items():
            r.plant.devices[aid].power_kw = power
        r.plant.devices["bat"].soc = soc
        r.plant.devices["cold"].temperature_c = temp
        r.plant.publish(r.fleet)
        measurements = {aid: m for aid in states if (m := r.fleet.latest(aid)) is not None}
        await r.override(target_kw)  # a cycle at once, with these readings
        await r.tick(PERIOD_S)  # and one more on the same readings
        return list(r.plant.received), measurements


@given(
    powers=st.tuples(
        st.floats(-300, 200),
        st.floats(-500, 0),
        st.floats(0, 300),
        st.floats(0, 150),
        st.floats(0, 200),
        st.floats(-400, 0),
    ),
    soc=st.floats(0, 1),
    temp=st.floats(-30, -10),
    target_kw=st.floats(-3000, 3000),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_setpoint_leaves_outside_its_limits(
    powers: tuple[float, ...], soc: float, temp: float, target_kw: float
) -> None:
    sent, measured = asyncio.run(_one_cycle(powers, soc, temp, target_kw))
    engine = MIXED_PARK.engine
    for sp in sent:
        asset = MIXED_PARK.asset(sp.asset_id)
        assert static_limits(asset).contains(sp.power_kw)
        if sp.asset_id == "pv":
            # A cap on injection: its available power is estimated from the clear sky, not
            # from this one reading, and the inverter's rating (no cap) is always allowed.
            continue
        limits, _ = asset_limits(
            asset,
            measured[sp.asset_id],
            sp.issued_at,
            MIXED_PARK.tz,
            horizon_s=engine.setpoint_validity_s,
            period_s=engine.control_period_s,
        )
        assert limits.contains(sp.power_kw, tolerance_kw=1e-6)
        if sp.asset_id == "bat" and soc >= 0.9:
            assert sp.power_kw <= 0.0  # a full battery is never charged
        if sp.asset_id == "gen":
            assert -400.0 <= sp.power_kw <= -100.0  # a running generator stays in its range
    assert np.isfinite([sp.power_kw for sp in sent]).all()


# --- PV: a cap the loop set is lifted as soon as nobody needs it -----------------------------

# 03:00 in Shanghai on Wednesday 2024-06-05: two hours before sunrise.
NIGHT = datetime(2024, 6, 4, 19, 0, tzinfo=UTC)
PV_ASSETS: list[dict[str, Any]] = [
    {"id": "pv", "kind": "pv", "capacity_kwp": 500, "curtailment_cost_per_mwh": 50},
    battery("bat", power_kw=50, capacity_kwh=400, soc_initial=0.5),
]


@dataclass
class SimRig:
    """The control loop driving the simulator's physics on a stepped clock."""

    clock: SteppedClock
    sim: SimAdapter
    fleet: Fleet
    targets: TargetBook
    controller: Controller
    period_s: float

    async def run(self, minutes: float) -> list[tuple[float, float, float]]:
        """Run control periods for `minutes`; per period (PV output, PV available, cap in
        force), checking that the PV is never taken for an asset that does not follow."""
        rows = []
        pv = self.sim.models["pv"]
        assert isinstance(pv, PvModel)
        for _ in range(round(minutes * 60 / self.period_s)):
            now = self.clock.now() + timedelta(seconds=self.period_s)
            done = self.controller.cycles_run
            self.clock.set(now)
            self.fleet.accept(self.sim.name, self.sim.step_once(now, self.period_s))
            self.clock.wake()
            report = await asyncio.wait_for(self.controller.wait_cycle(done), 5)
            await asyncio.wait_for(self.controller.wait_idle(), 5)
            assert report.degraded == 0
            setpoint = pv.setpoint
            cap = -np.inf if setpoint is None or setpoint.expired(now) else setpoint.power_kw
            rows.append((-pv.power_kw, pv.available_kw, cap))
        return rows


@contextlib.asynccontextmanager
async def sim_rig(
    assets: list[dict[str, Any]], cloudiness: float, period_s: float = 60.0
) -> AsyncIterator[SimRig]:
    hold_s = 2.5 * period_s
    park = make_park(
        assets, control_period_s=period_s, telemetry_stale_s=hold_s, setpoint_validity_s=hold_s
    )
    clock = SteppedClock(NIGHT)
    metrics = Metrics()
    fleet = Fleet(park, clock, stale_after_s=hold_s, metrics=metrics)
    sim = SimAdapter(park.iter_assets(), park, clock, seed=3, cloudiness=cloudiness)
    targets = TargetBook()
    routes = dict.fromkeys(sim.asset_ids, sim)
    controller = Controller(park, fleet, routes, clock, metrics, targets)
    fleet.accept(sim.name, sim.step_once(NIGHT, period_s))
    task = asyncio.create_task(controller.run(), name="controller-under-test")
    try:
        await asyncio.wait_for(controller.wait_cycle(0), 5)
        yield SimRig(clock, sim, fleet, targets, controller, period_s)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(("cloudiness", "period_s"), [(0.0, 60.0), (0.3, 60.0), (0.3, 300.0)])
async def test_pv_capped_at_night_generates_again_in_the_morning(
    cloudiness: float, period_s: float
) -> None:
    # The park is asked to export far more than it can all day: no curtailment is ever
    # wanted, so the PV must follow the sun from sunrise on.
    async with sim_rig(PV_ASSETS, cloudiness, period_s) as r:
        r.targets.set_schedule(NIGHT, timedelta(hours=1), [-5000.0] * 12)
        rows = await r.run(7 * 60)  # 03:00 to 10:00
        per_hour = round(3600 / period_s)
        assert all(available == 0.0 for _, available, _ in rows[:per_hour])  # 03:00-04:00
        morning = rows[4 * per_hour :]  # 07:00-10:00
        assert np.mean([available for _, available, _ in morning]) > 100.0
        for output, available, cap in morning:
            assert output == pytest.approx(available, rel=0.02, abs=1.0)
            assert -cap >= available  # no cap in force below what the sun gives
        output, available, _ = rows[-1]
        assert available > 150.0  # 10:00 in June: the array is well up
        assert output == pytest.approx(available, rel=0.02)


async def test_a_cap_the_target_asked_for_is_lifted_when_it_no_longer_does() -> None:
    async with sim_rig(PV_ASSETS, cloudiness=0.2) as r:
        await r.run(7 * 60)  # to 10:00, nothing asked
        now = r.clock.now()
        # Zero export asked for: the PV is curtailed (the battery alone cannot absorb it).
        r.targets.set_override(0.0, now, now + timedelta(minutes=30))
        rows = await r.run(30)
        output, available, cap = rows[-1]
        assert available > 150.0
        assert output < 0.5 * available
        assert cap == pytest.approx(-output, abs=5.0)
        # Then all the export it can give: the cap goes, the PV generates in full again.
        r.targets.set_override(-5000.0, r.clock.now(), r.clock.now() + timedelta(hours=1))
        rows = await r.run(30)
        for output, available, cap in rows[2:]:
            assert output == pytest.approx(available, rel=0.02, abs=1.0)
            assert -cap >= available
