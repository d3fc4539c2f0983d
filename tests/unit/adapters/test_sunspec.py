"""SunSpec layouts and encode/decode, checked against pysunspec2's own register parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sunspec2 import device as sunspec_device

from adapters import sunspec
from vpp.errors import PayloadError


def as_bytes(registers: list[int]) -> bytes:
    return b"".join(r.to_bytes(2, "big") for r in registers)


def parsed(model_id: int, registers: list[int]) -> sunspec_device.Model:
    """pysunspec2's reading of a model block: an independent decoder to compare with."""
    return sunspec_device.Model(
        model_id, data=as_bytes(registers), model_len=sunspec.layout(model_id).length
    )


@pytest.mark.parametrize("model_id", [1, 802, 704])
def test_layout_offsets_and_length_agree_with_pysunspec2(model_id: int) -> None:
    layout = sunspec.layout(model_id)
    registers = sunspec.encode_model(model_id, {})
    model = parsed(model_id, registers)
    assert set(layout.points) == set(model.points)
    for name, point in layout.points.items():
        assert (point.offset, point.size) == (model.points[name].offset, model.points[name].len)
    # L counts every register after ID and L, nested groups included
    assert model.points["L"].value == layout.length
    assert model.points["ID"].value == model_id


def test_the_points_the_adapter_uses_are_where_the_standard_puts_them() -> None:
    battery = sunspec.layout(802)
    assert battery.point("W").type == "int16"
    assert battery.point("W").sf == "W_SF"
    assert battery.point("SoC").sf == "SoC_SF"
    assert battery.point("State").symbols["FAULT"] == 99
    controls = sunspec.layout(704)
    assert controls.point("WSet").type == "int32"
    assert controls.point("WSet").writable
    assert controls.span("WSetEna", "WSetMod", "WSet") == (controls.point("WSetEna").offset, 4)
    assert controls.symbol("WSetMod", "WATTS") == 1


@given(
    watts=st.integers(-32767, 32767),
    w_sf=st.integers(-3, 3),
    soc=st.integers(0, 1000),
    state=st.sampled_from([1, 2, 3, 4, 5, 6, 99]),
)
def test_battery_values_decode_as_pysunspec2_computes_them(
    watts: int, w_sf: int, soc: int, state: int
) -> None:
    registers = sunspec.encode_model(
        802, {"W": watts, "W_SF": w_sf, "SoC": soc, "SoC_SF": -1, "State": state}
    )
    layout = sunspec.layout(802)
    model = parsed(802, registers)
    assert sunspec.read_scaled(registers, layout, "W") == pytest.approx(model.points["W"].cvalue)
    assert sunspec.read_scaled(registers, layout, "SoC") == pytest.approx(
        model.points["SoC"].cvalue
    )
    assert sunspec.decode_raw(registers, layout.point("State")) == model.points["State"].value


@given(watts=st.integers(-(2**31) + 1, 2**31 - 1), sf=st.integers(-2, 2))
def test_wset_round_trips_through_pysunspec2(watts: int, sf: int) -> None:
    layout = sunspec.layout(704)
    registers = sunspec.encode_model(704, {"WSet_SF": sf, "WSetEna": 1})
    wset = layout.point("WSet")
    words = sunspec.encode_raw(watts, wset)
    registers[wset.offset : wset.offset + 2] = words
    model = parsed(704, registers)
    assert model.points["WSet"].value == watts
    assert sunspec.read_scaled(registers, layout, "WSet") == pytest.approx(
        model.points["WSet"].cvalue
    )


@given(value_w=st.floats(-1e6, 1e6, allow_nan=False), sf=st.integers(-1, 2))
def test_encode_scaled_rounds_to_the_nearest_step(value_w: float, sf: int) -> None:
    layout = sunspec.layout(704)
    point = layout.point("WSet")
    registers = sunspec.encode_model(704, {"WSet_SF": sf})
    registers[point.offset : point.offset + 2] = sunspec.encode_scaled(value_w, sf, point)
    decoded = sunspec.read_scaled(registers, layout, "WSet")
    assert decoded is not None
    assert abs(decoded - value_w) <= 0.5 * 10.0**sf + 1e-9


def test_unimplemented_points_read_as_none_like_pysunspec2() -> None:
    registers = sunspec.encode_model(802, {"W_SF": 0})
    layout = sunspec.layout(802)
    assert registers[layout.point("W").offset] == 0x8000
    assert sunspec.read_scaled(registers, layout, "W") is None
    assert parsed(802, registers).points["W"].value is None


def test_unusable_scale_factors_are_payload_errors() -> None:
    layout = sunspec.layout(802)
    missing_sf = sunspec.encode_model(802, {"W": 100})
    with pytest.raises(PayloadError) as caught:
        sunspec.read_scaled(missing_sf, layout, "W")
    assert caught.value.reason == "not_implemented"
    absurd_sf = sunspec.encode_model(802, {"W": 100, "W_SF": 20})
    with pytest.raises(PayloadError) as caught:
        sunspec.read_scaled(absurd_sf, layout, "W")
    assert caught.value.reason == "malformed"


def test_values_that_do_not_fit_are_refused() -> None:
    wset = sunspec.layout(704).point("WSet")
    with pytest.raises(PayloadError):
        sunspec.encode_scaled(3e9, 0, wset)
    with pytest.raises(PayloadError):
        sunspec.encode_scaled(float("inf"), 0, wset)
    with pytest.raises(PayloadError):
        sunspec.encode_raw(-(2**31), wset)  # the not-implemented marker


def test_short_block_is_a_payload_error() -> None:
    layout = sunspec.layout(802)
    with pytest.raises(PayloadError) as caught:
        sunspec.decode_raw([802, 62, 0], layout.point("W"))
    assert caught.value.reason == "short_read"


def test_chain_image_walks_from_the_marker_to_the_end_model() -> None:
    image = sunspec.chain_image([(1, {"Mn": "Maker", "SN": "X1"}), (802, {}), (704, {})])
    assert sunspec.is_marker(image)
    found = []
    at = 2
    while image[at] != sunspec.END_MODEL_ID:
        found.append((image[at], at))
        at += 2 + image[at + 1]
    assert [m for m, _ in found] == [1, 802, 704]
    assert image[at:] == [0xFFFF, 0]
    common = sunspec.layout(1)
    assert sunspec.decode_raw(image[2:], common.point("Mn")) == "Maker"
    assert parsed(1, image[2 : 2 + 2 + common.length]).points["SN"].value == "X1"


def test_unknown_model_and_point_are_key_errors() -> None:
    with pytest.raises(KeyError):
        sunspec.layout(65000)
    with pytest.raises(KeyError):
        sunspec.layout(802).point("NoSuchPoint")
    with pytest.raises(KeyError):
        sunspec.encode_model(802, {"NoSuchPoint": 1})
