"""Simulated battery, PV and generator physics, and the response faults shared by every kind."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sim import (
    BatteryModel,
    GeneratorModel,
    PvModel,
    SimOptions,
    Site,
)
from vpp import solar
from vpp.config.schema import (
    BatteryAsset,
    Generator,
    Location,
    PvAsset,
    SimConnection,
)
from vpp.domain import Setpoint

SITE_LOCATION = Location(latitude_deg=31.23, longitude_deg=121.47)
START = datetime(2025, 6, 2, 4, 0, tzinfo=UTC)  # Monday noon in Shanghai


def site() -> Site:
    return Site(SITE_LOCATION, "Asia/Shanghai")


def no_lag(**fields: object) -> SimOptions:
    return SimOptions(connection=SimConnection.model_validate({"response_lag_s": 0, **fields}))


def battery(**fields: object) -> BatteryAsset:
    data = {"id": "bat", "kind": "battery", "power_kw": 500, "capacity_kwh": 1000, **fields}
    return BatteryAsset.model_validate(data)


def pv(**fields: object) -> PvAsset:
    return PvAsset.model_validate({"id": "pv", "kind": "pv", "capacity_kwp": 800, **fields})


def generator(**fields: object) -> Generator:
    data = {
        "id": "gen",
        "kind": "generator",
        "min_kw": 100,
        "max_kw": 500,
        "fuel_cost_per_mwh": 900,
        "emission_kg_per_kwh": 0.55,
        **fields,
    }
    return Generator.model_validate(data)


def command(asset_id: str, power_kw: float, at: datetime, valid_s: float = 3600.0) -> Setpoint:
    return Setpoint(asset_id, power_kw, at, at + timedelta(seconds=valid_s), f"c-{at:%H%M%S}")


# --- battery ----------------------------------------------------------------------------------


def test_battery_energy_balance_with_efficiencies() -> None:
    asset = battery(charge_efficiency=0.9, discharge_efficiency=0.85, soc_initial=0.5)
    model = BatteryModel(asset, site(), no_lag())
    now = START
    for power in (400.0, -300.0, 250.0, -500.0, 100.0, -50.0):
        model.apply(command("bat", power, now))
        for _ in range(30):
            now += timedelta(seconds=10)
            model.step(now, 10.0)
    stored = (model.soc - 0.5) * asset.capacity_kwh
    expected = 0.9 * model.imported_kwh - model.exported_kwh / 0.85
    assert model.imported_kwh > 0
    assert model.exported_kwh > 0
    assert stored == pytest.approx(expected, abs=1e-9)


def test_battery_stops_exactly_at_soc_limits() -> None:
    asset = battery(soc_initial=0.85, soc_max=0.9, charge_efficiency=0.95)
    model = BatteryModel(asset, site(), no_lag())
    now = START
    model.apply(command("bat", 500.0, now))
    for _ in range(60):  # 10 min at up to 500 kW: more than the 50 kWh of room
        now += timedelta(seconds=10)
        model.step(now, 10.0)
    assert model.soc == pytest.approx(0.9)
    assert model.power_kw == pytest.approx(0.0, abs=1e-9)
    # 50 kWh of room at 95 % charge efficiency takes 52.63 kWh from the grid
    assert model.imported_kwh == pytest.approx(50 / 0.95)
    assert model.limits_kw()[1] == pytest.approx(0.0, abs=1e-9)
    assert model.limits_kw()[0] == pytest.approx(-500.0)


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.floats(-2000, 2000), st.sampled_from([1.0, 2.0, 5.0, 60.0])),
        min_size=1,
        max_size=60,
    ),
    lag_s=st.sampled_from([0.0, 2.0, 10.0]),
    under=st.sampled_from([0.0, 0.3]),
)
def test_battery_limits_hold_under_random_setpoints(
    requests: list[tuple[float, float]], lag_s: float, under: float
) -> None:
    asset = battery(capacity_kwh=200, soc_initial=0.5, ramp_kw_per_s=50, charge_power_kw=300)
    connection = SimConnection(response_lag_s=lag_s, under_delivery_fraction=under)
    model = BatteryModel(asset, site(), SimOptions(connection=connection))
    now = START
    previous = 0.0
    for power, dt in requests:
        model.apply(command("bat", power, now))
        now += timedelta(seconds=dt)
        model.step(now, dt)
        assert -500.0 - 1e-9 <= model.power_kw <= 300.0 + 1e-9
        assert asset.soc_min - 1e-12 <= model.soc <= asset.soc_max + 1e-12
        assert abs(model.power_kw - previous) <= 50.0 * dt + 1e-6
        previous = model.power_kw
    stored = (model.soc - 0.5) * asset.capacity_kwh
    balance = 0.95 * model.imported_kwh - model.exported_kwh / 0.95
    assert stored == pytest.approx(balance, abs=1e-6)


def test_battery_local_control_is_idle() -> None:
    model = BatteryModel(battery(), site(), no_lag())
    model.step(START, 2.0)
    assert model.power_kw == 0.0
    assert model.measure(START).soc_fraction == 0.5


# --- PV ---------------------------------------------------------------------------------------


def test_pv_is_zero_at_night_and_positive_at_noon() -> None:
    model = PvModel(pv(), site(), no_lag())
    midnight = datetime(2025, 6, 2, 16, 0, tzinfo=UTC)  # 00:00 local
    model.step(midnight, 2.0)
    assert model.power_kw == 0.0
    model.step(START, 2.0)
    assert model.power_kw < -100.0  # generation is negative
    clear = solar.pv_available_kw(pv(), SITE_LOCATION, [START])[0]
    assert -model.power_kw <= clear + 1e-6  # clouds only take away


def test_pv_follows_clear_sky_without_clouds() -> None:
    model = PvModel(pv(), site(), SimOptions(cloudiness=0.0, connection=no_lag().connection))
    times = [START + timedelta(hours=h) for h in (-5, -3, 0, 2, 4)]
    # conditions are read at the middle of each step
    middles = [t - timedelta(seconds=1) for t in times]
    expected = solar.pv_available_kw(pv(), SITE_LOCATION, middles)
    for moment, power in zip(times, expected, strict=True):
        model.step(moment, 2.0)
        assert -model.power_kw == pytest.approx(power, rel=1e-9)


def test_pv_curtailment_caps_injection() -> None:
    model = PvModel(pv(), site(), SimOptions(cloudiness=0.0, connection=no_lag().connection))
    model.step(START, 2.0)
    available = -model.power_kw
    assert available > 300
    assert model.apply(command("pv", -300.0, START)) == pytest.approx(-300.0)
    model.step(START + timedelta(seconds=2), 2.0)
    assert model.power_kw == pytest.approx(-300.0)
    # a positive request cannot make PV draw: fully curtailed
    model.apply(command("pv", 200.0, START))
    model.step(START + timedelta(seconds=4), 2.0)
    assert model.power_kw == 0.0
    # asking for more than is available gives what is available
    model.apply(command("pv", -5000.0, START))
    model.step(START + timedelta(seconds=6), 2.0)
    assert model.power_kw == pytest.approx(-available, rel=1e-3)


def test_pv_not_curtailable_ignores_caps() -> None:
    model = PvModel(pv(curtailable=False), site(), SimOptions(cloudiness=0.0))
    model.step(START, 2.0)
    full = model.power_kw
    model.apply(command("pv", -100.0, START))
    model.step(START + timedelta(seconds=2), 2.0)
    assert model.power_kw == pytest.approx(full, rel=1e-3)


def cloud_series(seed: int, steps: int = 600, dt: float = 10.0) -> np.ndarray:
    model = PvModel(pv(), site(), SimOptions(seed=seed, cloudiness=0.5))
    values = []
    now = START
    for _ in range(steps):
        now += timedelta(seconds=dt)
        model.step(now, dt)
        values.append(model.clear_sky_index)
    return np.array(values)


def test_pv_clouds_are_correlated_and_seeded() -> None:
    series = cloud_series(seed=7)
    assert series.std() > 0.02  # there are clouds
    assert series.min() >= 0.05 and series.max() <= 1.0
    centred = series - series.mean()
    lag1 = float((centred[1:] * centred[:-1]).sum() / (centred * centred).sum())
    assert lag1 > 0.9  # white noise would be about 0
    np.testing.assert_array_equal(series, cloud_series(seed=7))
    assert not np.array_equal(series, cloud_series(seed=8))


def test_pv_meter_counts_exported_energy() -> None:
    model = PvModel(pv(), site(), SimOptions(cloudiness=0.0, connection=no_lag().connection))
    now = START
    expected = 0.0
    for _ in range(360):
        now += timedelta(seconds=10)
        model.step(now, 10.0)
        middle = now - timedelta(seconds=5)
        expected += solar.pv_available_kw(pv(), SITE_LOCATION, [middle])[0] * 10 / 3600
    assert model.exported_kwh == pytest.approx(expected, rel=1e-9)
    assert model.energy_kwh == pytest.approx(-expected, rel=1e-9)
    assert model.measure(now).energy_kwh == pytest.approx(-expected, rel=1e-9)


# --- generator --------------------------------------------------------------------------------


def run_generator(model: GeneratorModel, seconds: int, dt: float, start: datetime) -> list[float]:
    out = []
    now = start
    for _ in range(int(seconds / dt)):
        now += timedelta(seconds=dt)
        model.step(now, dt)
        out.append(model.power_kw)
    return out


def test_generator_starts_at_min_and_ramps() -> None:
    model = GeneratorModel(generator(ramp_kw_per_min=60), site(), no_lag())
    model.step(START, 1.0)
    assert model.power_kw == 0.0  # local control: off
    model.apply(command("gen", -400.0, START))
    trace = run_generator(model, 600, 1.0, START)
    assert trace[0] == pytest.approx(-100.0)  # synchronised at min_kw
    steps = np.diff(trace)
    assert np.all(np.abs(steps) <= 1.0 + 1e-9)  # 60 kW/min = 1 kW/s
    # from 100 to 400 kW at 1 kW/s takes 300 s
    assert trace[300] == pytest.approx(-400.0)
    assert trace[150] == pytest.approx(-250.0)
    assert trace[-1] == pytest.approx(-400.0)
    assert all(-500.0 <= p <= -100.0 for p in trace)


def test_generator_output_within_min_and_max_or_off() -> None:
    model = GeneratorModel(generator(), site(), no_lag())
    cases = [(-50.0, 0.0), (-60.0, -100.0), (-700.0, -500.0), (-250.0, -250.0), (0.0, 0.0)]
    now = START
    for request, expected in cases:
        model.apply(command("gen", request, now))
        now += timedelta(seconds=2)
        model.step(now, 2.0)
        assert model.power_kw == pytest.approx(expected)


def test_generator_respects_min_up_time_and_ramps_down_before_stopping() -> None:
    model = GeneratorModel(generator(ramp_kw_per_min=120, min_up_min=5), site(), no_lag())
    model.apply(command("gen", -300.0, START))
    run_generator(model, 120, 1.0, START)
    assert model.power_kw == pytest.approx(-300.0)
    stop_at = START + timedelta(seconds=120)
    model.apply(command("gen", 0.0, stop_at))
    trace = run_generator(model, 400, 1.0, stop_at)
    # 300 -> 100 kW at 2 kW/s takes 100 s, then it holds min_kw until 5 min after the start
    assert trace[99] == pytest.approx(-100.0)
    assert trace[150] == pytest.approx(-100.0)
    assert trace[178] == pytest.approx(-100.0)
    assert trace[185] == 0.0
    assert model.starts == 1


# --- response faults shared by every kind -------------------------------------------------------


def test_first_order_response_lag() -> None:
    connection = SimConnection(response_lag_s=10.0)
    model = BatteryModel(battery(), site(), SimOptions(connection=connection))
    model.apply(command("bat", 400.0, START))
    now = START
    trace = []
    for _ in range(60):
        now += timedelta(seconds=1)
        model.step(now, 1.0)
        trace.append(model.power_kw)
    assert trace[9] == pytest.approx(400 * (1 - math.exp(-1)), rel=1e-9)
    assert trace[29] == pytest.approx(400 * (1 - math.exp(-3)), rel=1e-9)
    assert all(b > a for a, b in itertools.pairwise(trace))


def test_under_delivery_gives_part_of_the_requested_change() -> None:
    connection = SimConnection(response_lag_s=0.0, under_delivery_fraction=0.25)
    model = BatteryModel(battery(), site(), SimOptions(connection=connection))
    model.apply(command("bat", -400.0, START))
    model.step(START + timedelta(seconds=2), 2.0)
    assert model.power_kw == pytest.approx(-300.0)
    # relative to local control: PV curtailed from its available output
    pv_connection = SimConnection(response_lag_s=0.0, under_delivery_fraction=0.5)
    pv_model = PvModel(pv(), site(), SimOptions(cloudiness=0.0, connection=pv_connection))
    pv_model.step(START, 2.0)
    available = -pv_model.power_kw
    pv_model.apply(command("pv", 0.0, START))
    pv_model.step(START + timedelta(seconds=2), 2.0)
    assert pv_model.power_kw == pytest.approx(-available / 2, rel=1e-3)


def test_expired_setpoint_reverts_to_local_control() -> None:
    model = BatteryModel(battery(), site(), no_lag())
    model.apply(command("bat", 300.0, START, valid_s=10.0))
    now = START
    powers = []
    for _ in range(10):
        now += timedelta(seconds=2)
        model.step(now, 2.0)
        powers.append(model.power_kw)
    assert powers[:4] == pytest.approx([300.0] * 4)  # up to 8 s: still valid
    assert powers[4:] == [0.0] * 6  # from 10 s on: idle again
    assert model.setpoint is None


def dropout_trace(seed: int, rate_per_h: float) -> list[bool]:
    connection = SimConnection(dropout_probability_per_h=rate_per_h, seed=seed)
    model = BatteryModel(battery(), site(), SimOptions(connection=connection, dropout_mean_s=120))
    now = START
    silent = []
    for _ in range(20 * 360):  # 20 h in 10 s steps
        now += timedelta(seconds=10)
        model.step(now, 10.0)
        silent.append(model.is_silent(now))
    return silent


def test_random_dropouts_go_silent_and_come_back() -> None:
    silent = dropout_trace(seed=3, rate_per_h=0.5)
    starts = sum(1 for a, b in itertools.pairwise(silent) if b and not a)
    # about 0.5 dropouts an hour over 20 h (Poisson: 10 ± 3), each about 2 min long
    assert 4 <= starts <= 18
    assert 0.002 < sum(silent) / len(silent) < 0.15
    assert not silent[-1] or not silent[-60]  # they end
    assert dropout_trace(seed=3, rate_per_h=0.5) == silent  # seeded
    assert not any(dropout_trace(seed=3, rate_per_h=0.0))
