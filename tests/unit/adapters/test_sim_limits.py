"""Every simulated kind stays within its enrolled limits whatever it is asked, and meters add up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sim import SimOptions, Site, make_model
from vpp.assets import static_limits
from vpp.config.loader import load_park
from vpp.config.schema import AnyAsset, Park, SimConnection
from vpp.domain import Setpoint

START = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)  # Monday 08:00 in Shanghai

PARK = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets").park


def variants(park: Park) -> list[AnyAsset]:
    """The small park's assets plus the variants that change behaviour: V2G, heating, ..."""
    assets = [asset for _, asset in park.iter_assets()]
    by_id = {asset.id: asset for asset in assets}
    assets.append(by_id["ev-b"].model_copy(update={"id": "ev-v2g", "v2g": True}))
    assets.append(by_id["shift-b"].model_copy(update={"id": "shift-int", "interruptible": True}))
    assets.append(by_id["gen-b"].model_copy(update={"id": "gen-ramp", "ramp_kw_per_min": 100.0}))
    return assets


ASSETS = variants(PARK)


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, len(ASSETS) - 1),
    requests=st.lists(
        st.tuples(
            st.one_of(st.floats(-1e4, 1e4), st.sampled_from([0.0, float("nan"), 1e9, -1e9])),
            st.sampled_from([1.0, 2.0, 30.0, 900.0]),
            st.floats(0, 1200),
        ),
        min_size=1,
        max_size=30,
    ),
    lag_s=st.sampled_from([0.0, 2.0, 30.0]),
    under=st.sampled_from([0.0, 0.5]),
    start_h=st.integers(0, 23),
)
def test_every_kind_stays_within_its_enrolled_limits(
    index: int,
    requests: list[tuple[float, float, float]],
    lag_s: float,
    under: float,
    start_h: int,
) -> None:
    asset = ASSETS[index]
    limits = static_limits(asset)
    connection = SimConnection(response_lag_s=lag_s, under_delivery_fraction=under)
    model = make_model(
        asset,
        Site(PARK.location, PARK.timezone),
        SimOptions(connection=connection, seed=index),
    )
    now = START + timedelta(hours=start_h)
    model.step(now, 2.0)
    for power, dt, valid_s in requests:
        setpoint = Setpoint(asset.id, power, now, now + timedelta(seconds=valid_s), "c")
        applied = model.apply(setpoint)
        assert limits.contains(applied, tolerance_kw=1e-6)
        low, high = model.limits_kw()
        assert low <= high + 1e-9
        now += timedelta(seconds=dt)
        model.step(now, dt)
        assert limits.contains(model.power_kw, tolerance_kw=1e-6), (asset.id, model.power_kw)
        reading = model.measure(now)
        assert reading.timestamp == now
        assert reading.energy_kwh == pytest.approx(model.imported_kwh - model.exported_kwh)
        if reading.soc_fraction is not None:
            assert 0.0 <= reading.soc_fraction <= 1.0
    assert model.imported_kwh >= 0.0
    assert model.exported_kwh >= 0.0


def test_every_kind_has_a_model() -> None:
    site = Site(PARK.location, PARK.timezone)
    kinds = {make_model(asset, site).kind for asset in ASSETS}
    assert kinds == {asset.kind for asset in ASSETS}
    assert len(kinds) == 7
