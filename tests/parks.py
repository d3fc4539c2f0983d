"""Parks generated for tests: many enterprises of simulated, controllable assets."""

from __future__ import annotations

from typing import Any

from vpp.config.schema import Park

# One asset of each controllable kind as the generated parks (and bench/control.py) enroll it,
# without id and connection.
BATTERY: dict[str, Any] = {"kind": "battery", "power_kw": 250, "capacity_kwh": 1000}
PV: dict[str, Any] = {"kind": "pv", "capacity_kwp": 400}
PROCESS_LOAD: dict[str, Any] = {
    "kind": "curtailable_load",
    "profile": {"weekday_kw": [600.0] * 24},
    "max_reduction_kw": 150,
}
COLD_STORE: dict[str, Any] = {
    "kind": "thermal_load",
    "rated_power_kw": 120,
    "cop": 2.5,
    "thermal_capacity_kwh_per_k": 300,
    "loss_kw_per_k": 3,
    "temp_min_c": -22,
    "temp_max_c": -16,
    "ambient_c": 28,
}
EV_DEPOT: dict[str, Any] = {
    "kind": "ev_charging",
    "chargers": 6,
    "charger_power_kw": 30,
    "sessions": [{"arrival": "08:00", "departure": "18:00", "energy_kwh": 400}],
}
GENERATOR: dict[str, Any] = {
    "kind": "generator",
    "min_kw": 50,
    "max_kw": 300,
    "fuel_cost_per_mwh": 900,
    "emission_kg_per_kwh": 0.6,
}


def generated_park(
    n_enterprises: int = 15,
    *,
    control_period_s: float = 2.0,
    telemetry_stale_s: float = 6.0,
    fallback: str = "release",
    park_id: str = "generated",
) -> Park:
    """`n_enterprises` x 10 simulated assets of every controllable kind (150 by default).

    Devices answer with a 2 s first-order lag and report every 2 s; batteries deliver 3 %
    short so that the loop's integral term has work to do.
    """
    enterprises: list[dict[str, Any]] = []
    for e in range(n_enterprises):
        sim = {"telemetry_period_s": 2.0, "response_lag_s": 2.0, "seed": e}
        lossy = {**sim, "under_delivery_fraction": 0.03}
        assets: list[dict[str, Any]] = [
            {**BATTERY, "id": f"e{e}-bat{k}", "connection": lossy} for k in range(5)
        ]
        assets += [
            {**PV, "id": f"e{e}-pv", "connection": sim},
            {**PROCESS_LOAD, "id": f"e{e}-load", "max_duration_min": 240, "connection": sim},
            {**COLD_STORE, "id": f"e{e}-cold", "connection": sim},
            {**EV_DEPOT, "id": f"e{e}-ev", "connection": sim},
            {**GENERATOR, "id": f"e{e}-gen", "connection": sim},
        ]
        enterprises.append(
            {"id": f"e{e}", "name": f"E{e}", "connection_limit_kw": 10_000, "assets": assets}
        )
    return Park.model_validate(
        {
            "id": park_id,
            "name": "Generated park",
            "location": {"latitude_deg": 31.23, "longitude_deg": 121.47},
            "grid_import_limit_kw": 50_000,
            "market": {"rule_set": "cn_provincial_spot"},
            "engine": {
                "control_period_s": control_period_s,
                "telemetry_stale_s": telemetry_stale_s,
                "setpoint_validity_s": 10,
                "degraded_after_cycles": 3,
                "fallback": fallback,
            },
            "enterprises": enterprises,
        }
    )
