"""Flexibility envelopes on cases computed by hand, and their invariants."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.flexibility import (
    PARK,
    AssetFlexibility,
    GroupLimits,
    build_envelope,
    combine,
    notice_of,
    sustained_kw,
)
from dispatch.forecast import forecast_park
from dispatch.problem import build_problem
from dispatch.series import Horizon
from vpp.config import load_park
from vpp.config.schema import Park

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = datetime(2025, 6, 2, tzinfo=TZ)
QUARTER = timedelta(minutes=15)


def park_of(
    assets: list[dict[str, Any]],
    *,
    connection_kw: float = 10_000,
    export_kw: float = 10_000,
    grid_import_kw: float = 20_000,
    grid_export_kw: float = 20_000,
) -> Park:
    return Park.model_validate(
        {
            "id": "p",
            "name": "Test park",
            "location": {"latitude_deg": 31.23, "longitude_deg": 121.47},
            "grid_import_limit_kw": grid_import_kw,
            "grid_export_limit_kw": grid_export_kw,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {
                    "id": "e1",
                    "name": "E1",
                    "connection_limit_kw": connection_kw,
                    "export_limit_kw": export_kw,
                    "assets": assets,
                }
            ],
        }
    )


def envelope_for(park: Park, horizon: Horizon) -> Any:
    forecast = forecast_park(park, horizon)
    problem = build_problem(park, horizon, np.full(horizon.intervals, 400.0), forecast)
    return build_envelope(problem, notice_of(park))


BATTERY = {
    "id": "bat",
    "kind": "battery",
    "power_kw": 500,
    "capacity_kwh": 1000,
    "soc_min": 0.1,
    "soc_max": 0.9,
    "soc_initial": 0.5,
    "charge_efficiency": 1.0,
    "discharge_efficiency": 1.0,
}


def test_battery_at_half_charge_moves_500_kw_for_0_8_h_each_way() -> None:
    # Six-minute intervals make 0.8 h exactly eight intervals.
    horizon = Horizon(MONDAY, timedelta(minutes=6), 40)
    park = envelope_for(park_of([BATTERY]), horizon).park
    np.testing.assert_allclose(park.down_kw, 500.0)
    np.testing.assert_allclose(park.up_kw, 500.0)
    # 400 kWh above the 10 % floor and below the 90 % ceiling: 0.8 h at 500 kW.
    assert park.down_intervals[0] == 8
    assert park.down_hours()[0] == pytest.approx(0.8)
    assert park.up_intervals[0] == 8
    # Held for a full hour (ten intervals) the battery gives 400 kW.
    assert park.down_for(10)[0] == pytest.approx(400.0)
    # A window that leaves the horizon offers nothing.
    assert park.down_for(10)[35] == 0.0


def test_battery_losses_shorten_the_move() -> None:
    battery = {**BATTERY, "charge_efficiency": 0.95, "discharge_efficiency": 0.95}
    park = envelope_for(park_of([battery]), Horizon(MONDAY, QUARTER, 16)).park
    # Discharge: 400 kWh stored × 0.95 = 380 kWh at the meter: 0.76 h at 500 kW.
    assert park.down_intervals[0] == 3
    assert park.down_for(4)[0] == pytest.approx(380.0)
    # Charge: 400 kWh of room / 0.95 = 421.05 kWh drawn.
    assert park.up_for(4)[0] == pytest.approx(400 / 0.95)


def test_cold_store_band_limits_how_long_it_can_stop() -> None:
    cold = {
        "id": "cold",
        "kind": "thermal_load",
        "rated_power_kw": 150,
        "cop": 2.5,
        "thermal_capacity_kwh_per_k": 200,
        "loss_kw_per_k": 4,
        "temp_min_c": -22,
        "temp_max_c": -16,
        "ambient_c": 25,
    }
    park = envelope_for(park_of([cold]), Horizon(MONDAY, QUARTER, 40)).park
    holding = 4 * (25 - -19) / 2.5  # 70.4 kW holds -19 °C
    np.testing.assert_allclose(park.baseline_kw, holding)
    np.testing.assert_allclose(park.down_kw, holding)
    np.testing.assert_allclose(park.up_kw, 150 - holding)
    # 3 K of band either side × 200 kWh/K / COP 2.5 = 240 kWh of electric energy.
    assert park.down_intervals[0] == 13  # 240 / 70.4 = 3.41 h
    assert park.down_for(14)[0] == pytest.approx(240 / 3.5)
    assert park.up_for(16)[0] == pytest.approx(60.0)  # 240 kWh over 4 h


def test_curtailment_lasts_its_maximum_duration() -> None:
    load = {
        "id": "load",
        "kind": "curtailable_load",
        "profile": {"weekday_kw": [400.0] * 24},
        "max_reduction_kw": 300,
        "max_duration_min": 120,
        "cost_per_mwh": 200,
    }
    park = envelope_for(park_of([load]), Horizon(MONDAY, QUARTER, 24)).park
    np.testing.assert_allclose(park.baseline_kw, 400.0)
    np.testing.assert_allclose(park.down_kw, 300.0)
    np.testing.assert_allclose(park.up_kw, 0.0)
    assert park.down_for(8)[0] == 300.0
    assert park.down_for(9)[0] == 0.0
    assert park.down_intervals[0] == 8


def test_ev_reduction_lasts_while_the_energy_can_still_be_delivered() -> None:
    depot = {
        "id": "ev",
        "kind": "ev_charging",
        "chargers": 1,
        "charger_power_kw": 60,
        "sessions": [{"arrival": "08:00", "departure": "17:00", "energy_kwh": 300}],
    }
    park = envelope_for(park_of([depot]), Horizon(MONDAY, QUARTER, 96)).park
    assert park.baseline_kw[32] == 60.0
    assert park.down_kw[32] == 60.0
    # 9 h plugged × 60 kW = 540 kWh of room for 300 kWh: 240 kWh may wait, 4 h at 60 kW.
    assert park.down_intervals[32] == 16
    assert park.down_kw[31] == 0.0


def test_generator_and_connection_limits() -> None:
    load = {
        "id": "load",
        "kind": "curtailable_load",
        "profile": {"weekday_kw": [2800.0] * 24},
        "max_reduction_kw": 500,
    }
    generator = {
        "id": "gen",
        "kind": "generator",
        "max_kw": 1000,
        "fuel_cost_per_mwh": 900,
        "emission_kg_per_kwh": 0.55,
    }
    battery = {**BATTERY, "power_kw": 400}
    park = park_of(
        [load, generator, battery], connection_kw=3000, export_kw=0, grid_import_kw=20_000
    )
    envelope = envelope_for(park, Horizon(MONDAY, QUARTER, 8))
    enterprise = envelope.groups["e1"]
    # Up: the battery could charge 400 kW but the connection leaves 200 kW above 2800.
    np.testing.assert_allclose(enterprise.up_kw, 200.0)
    # Down: 500 + 1000 + 400 = 1900 kW, within the 2800 kW baseline (no export allowed).
    np.testing.assert_allclose(enterprise.down_kw, 1900.0)
    np.testing.assert_allclose(envelope.park.down_kw, 1900.0)


def test_park_connection_caps_the_sum_of_enterprises() -> None:
    flex = [
        AssetFlexibility(
            f"a{i}",
            f"e{i}",
            np.full(4, 300.0),
            np.full(4, 300.0),
            np.full(4, np.inf),
            np.full(4, np.inf),
        )
        for i in range(2)
    ]
    horizon = Horizon(MONDAY, QUARTER, 4)
    baselines = {"e0": np.full(4, 100.0), "e1": np.full(4, 100.0)}
    limits = {"e0": GroupLimits(1000, 0), "e1": GroupLimits(1000, 0)}
    envelope = combine(horizon, flex, baselines, limits, GroupLimits(500, 50))
    np.testing.assert_allclose(envelope.groups["e0"].down_kw, 100.0)  # no export: to zero
    np.testing.assert_allclose(envelope.park.up_kw, 300.0)  # 500 kW import − 200 kW baseline
    np.testing.assert_allclose(envelope.park.down_kw, 200.0)  # each enterprise to zero
    assert envelope.park.group_id == PARK


def test_sustained_by_hand() -> None:
    headroom = np.array([100.0, 50.0, 100.0, 100.0])
    energy = np.array([60.0, 60.0, 60.0, 60.0])
    matrix = sustained_kw(headroom, energy, hours=0.5)
    # From k = 0: one interval 100 (energy allows 120), two: min(100, 50, 60) = 50,
    # three: min(50, 40) = 40, four: min(50, 30) = 30.
    np.testing.assert_allclose(matrix[0], [100.0, 50.0, 40.0, 30.0])
    np.testing.assert_allclose(matrix[2], [100.0, 60.0, 0.0, 0.0])


@settings(max_examples=25, deadline=None)
@given(
    soc=st.floats(0.1, 0.9),
    power=st.floats(50, 2000),
    capacity=st.floats(100, 5000),
    load=st.floats(0, 3000),
)
def test_envelope_invariants(soc: float, power: float, capacity: float, load: float) -> None:
    """Moves are non-negative, never grow with duration, and respect the connection."""
    battery = {
        **BATTERY,
        "power_kw": power,
        "capacity_kwh": capacity,
        "soc_initial": soc,
    }
    curtailable = {
        "id": "load",
        "kind": "curtailable_load",
        "profile": {"weekday_kw": [max(load, 1.0)] * 24},
        "max_reduction_kw": max(load, 1.0) / 2,
    }
    park = park_of([battery, curtailable], connection_kw=3000, export_kw=100)
    envelope = envelope_for(park, Horizon(MONDAY, QUARTER, 12))
    for group in envelope.groups.values():
        for matrix in (group.sustained_up_kw, group.sustained_down_kw):
            assert np.all(matrix >= 0)
            assert np.all(np.diff(matrix, axis=1) <= 1e-9)
        assert np.all(group.baseline_kw + group.up_kw <= 3000 + 1e-6)
        assert np.all(group.baseline_kw - group.down_kw >= -100 - 1e-6)


def test_small_park_envelope_is_deterministic() -> None:
    park = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets").park
    horizon = Horizon(MONDAY, QUARTER, 96)
    first = envelope_for(park, horizon)
    second = envelope_for(park, horizon)
    assert set(first.groups) == {"ent-a", "ent-b", PARK}
    for key, group in first.groups.items():
        np.testing.assert_array_equal(group.sustained_down_kw, second.groups[key].sustained_down_kw)
    total = first.groups["ent-a"].baseline_kw + first.groups["ent-b"].baseline_kw
    np.testing.assert_allclose(first.park.baseline_kw, total)


@settings(max_examples=20, deadline=None)
@given(keep=st.lists(st.booleans(), min_size=7, max_size=7), duration=st.integers(1, 12))
def test_single_duration_shortcut_matches_the_full_matrix(keep: list[bool], duration: int) -> None:
    park = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets").park
    envelope = envelope_for(park, Horizon(MONDAY, QUARTER, 24))
    chosen = [a for a, kept in zip(envelope.assets, keep, strict=True) if kept]
    full = envelope.subset(chosen).park
    np.testing.assert_allclose(
        envelope.park_held_kw(duration, up=False, assets=chosen), full.down_for(duration)
    )
    np.testing.assert_allclose(
        envelope.park_held_kw(duration, up=True, assets=chosen), full.up_for(duration)
    )
