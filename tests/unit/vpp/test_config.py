"""Enrollment config: the demo park is valid, and every kind of bad input gives one-line errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpp.cli import main
from vpp.config import load_park
from vpp.config.schema import BatteryAsset, TimeWindow
from vpp.domain import AssetKind
from vpp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "config" / "park.yaml"
MARKETS = ROOT / "config" / "markets"
LINE_FORMAT = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[\w.\[\]-]+): (?P<msg>.+)$")

GOOD = textwrap.dedent(
    """\
    id: p1
    name: Test park
    timezone: Asia/Shanghai
    location: {latitude_deg: 31.2, longitude_deg: 121.5}
    grid_import_limit_kw: 5000
    market: {rule_set: cn_provincial_spot, dr_product: cn_peak_valley_dr}
    enterprises:
      - id: e1
        name: Enterprise 1
        connection_limit_kw: 3000
        assets:
          - id: b1
            kind: battery
            power_kw: 500
            capacity_kwh: 1000
          - id: pv1
            kind: pv
            capacity_kwp: 400
    """
)


def write(tmp_path: Path, text: str, name: str = "park.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["validate", str(path), "--markets", str(MARKETS)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, [line for line in captured.err.splitlines() if line]


def test_demo_park_is_valid_and_covers_every_kind() -> None:
    loaded = load_park(DEMO)
    park = loaded.park
    assets = park.iter_assets()
    assert len(park.enterprises) >= 8
    assert len(assets) >= 60
    assert {asset.kind for _, asset in assets} == set(AssetKind)
    assert loaded.spot.intervals_per_day == 96
    assert loaded.dr is not None
    batteries = [a for _, a in assets if isinstance(a, BatteryAsset)]
    assert max(b.power_kw for b in batteries) >= 1000  # MW-scale storage


def test_validate_prints_summary_for_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "enterprises: 9" in out
    assert "battery" in out
    assert "flexibility: up" in out


def test_good_minimal_park(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, errors = validate(write(tmp_path, GOOD), capsys)
    assert (code, errors) == (0, [])


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        (
            "power_kw: 500",
            "power_kw: -500",
            14,
            "enterprises[0].assets[0].power_kw",
            "greater than 0",
        ),
        (
            "power_kw: 500",
            "power_kw: 9e9",
            14,
            "enterprises[0].assets[0].power_kw",
            "less than or equal",
        ),
        (
            "power_kw: 500",
            "power_kw: lots",
            14,
            "enterprises[0].assets[0].power_kw",
            "valid number",
        ),
        (
            "capacity_kwh: 1000",
            "capacity_kwh: 1000\n        colour: red",
            16,
            "enterprises[0].assets[0].colour",
            "unknown key",
        ),
        (
            "kind: battery",
            "kind: flywheel",
            13,
            "enterprises[0].assets[0].kind",
            "unknown kind 'flywheel'",
        ),
        (
            "        capacity_kwh: 1000\n",
            "",
            12,
            "enterprises[0].assets[0].capacity_kwh",
            "missing required field",
        ),
        ("id: pv1", "id: b1", 16, "enterprises[0].assets[1].id", "duplicate asset id 'b1'"),
        ("timezone: Asia/Shanghai", "timezone: Mars/Olympus", 3, "timezone", "unknown timezone"),
        (
            "rule_set: cn_provincial_spot",
            "rule_set: nowhere_spot",
            6,
            "market.rule_set",
            "unknown market rule set 'nowhere_spot'",
        ),
        (
            "rule_set: cn_provincial_spot",
            "rule_set: cn_peak_valley_dr",
            6,
            "market.rule_set",
            "not a spot market",
        ),
        (
            "latitude_deg: 31.2",
            "latitude_deg: 131.2",
            4,
            "location.latitude_deg",
            "less than or equal to 90",
        ),
        (
            "kind: pv",
            "kind: pv\n        connection: {adapter: mqtt, password: hunter2}",
            18,
            "enterprises[0].assets[1].connection",
            "must not be written in the file",
        ),
        (
            "kind: pv",
            "kind: pv\n        connection: {adapter: zigbee}",
            18,
            "enterprises[0].assets[1].connection.adapter",
            "unknown adapter",
        ),
        (
            "kind: pv",
            "kind: pv\n        connection: {gateway: gw9}",
            18,
            "enterprises[0].assets[1].connection.gateway",
            "unknown gateway 'gw9'",
        ),
    ],
)
def test_bad_field_gives_one_line_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    line: int,
    field: str,
    message: str,
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    code, errors = validate(path, capsys)
    assert code == 2
    assert len(errors) == 1, errors
    match = LINE_FORMAT.match(errors[0])
    assert match is not None, errors[0]
    assert match["file"] == str(path)
    assert (int(match["line"]), match["field"]) == (line, field)
    assert message in match["msg"]


def test_every_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("power_kw: 500", "power_kw: -1").replace(
        "capacity_kwp: 400", "capacity_kwp: 0"
    )
    code, errors = validate(write(tmp_path, text), capsys)
    assert code == 2
    assert [LINE_FORMAT.match(e)["line"] for e in errors] == ["14", "18"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"# only a comment\n", "file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
        (b"\xff\xfe\xfa bad utf8", "not UTF-8"),
        (b"id: [unclosed\nname: x\n", "invalid YAML"),
        (b"- just\n- a list\n", "expected a mapping at top level"),
        (b"id: a\nid: b\n", "duplicate key"),
        (b"id: a\nday: 2026-13-01\n", "month must be in 1..12"),
    ],
)
def test_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "park.yaml"
    path.write_bytes(content)
    code, errors = validate(path, capsys)
    assert code == 2
    assert len(errors) == 1
    assert errors[0].startswith(str(path) + ":")
    assert message in errors[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, errors = validate(tmp_path / "nope.yaml", capsys)
    assert code == 2
    assert errors == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_yaml_error_has_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD.replace("power_kw: 500", "power_kw: [500"))
    code, errors = validate(path, capsys)
    assert code == 2
    match = re.match(rf"^{re.escape(str(path))}:(\d+): invalid YAML", errors[0])
    assert match is not None and 14 <= int(match[1]) <= 16


def test_park_level_asset_must_reference_known_enterprise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        GOOD
        + "assets:\n  - {id: g1, kind: generator, enterprise: e9, max_kw: 100, fuel_cost_per_mwh: 800, emission_kg_per_kwh: 0.5}\n"
    )
    code, errors = validate(write(tmp_path, text), capsys)
    assert code == 2
    assert errors == [f"{tmp_path / 'park.yaml'}:20: assets[0].enterprise: unknown enterprise 'e9'"]


def test_duplicate_enterprise_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + "  - {id: e1, name: Again, connection_limit_kw: 100}\n"
    code, errors = validate(write(tmp_path, text), capsys)
    assert code == 2
    assert errors == [
        f"{tmp_path / 'park.yaml'}:19: enterprises[1].id: duplicate enterprise id 'e1' (also enterprises[0])"
    ]


def test_include_reports_the_included_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enterprise = textwrap.dedent(
        """\
        id: e2
        name: Enterprise 2
        connection_limit_kw: 1000
        assets:
          - {id: c1, kind: thermal_load, rated_power_kw: 100, thermal_capacity_kwh_per_k: 50,
             loss_kw_per_k: 2, temp_min_c: 5, temp_max_c: 3}
        """
    )
    write(tmp_path, enterprise, "e2.yaml")
    path = write(tmp_path, GOOD + "  - include: e2.yaml\n")
    code, errors = validate(path, capsys)
    assert code == 2
    assert len(errors) == 1
    assert errors[0].startswith(
        f"{tmp_path / 'e2.yaml'}:5: enterprises[1].assets[0]: temp_min_c 5.0 must be below"
    )


def test_include_of_valid_enterprise_file(tmp_path: Path) -> None:
    write(tmp_path, "id: e2\nname: E2\nconnection_limit_kw: 500\nassets: []\n", "e2.yaml")
    loaded = load_park(write(tmp_path, GOOD + "  - include: e2.yaml\n"), MARKETS)
    assert [e.id for e in loaded.park.enterprises] == ["e1", "e2"]


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "include: park.yaml\n", "loop.yaml")
    path = write(tmp_path, GOOD + "  - include: loop.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_park(path, MARKETS)


def test_cross_field_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace(
        "capacity_kwh: 1000", "capacity_kwh: 1000\n        soc_min: 0.9\n        soc_max: 0.2"
    )
    code, errors = validate(write(tmp_path, text), capsys)
    assert code == 2
    assert len(errors) == 1
    assert "soc_min 0.9 must be below soc_max 0.2" in errors[0]
    assert errors[0].startswith(f"{tmp_path / 'park.yaml'}:12: enterprises[0].assets[0]:")


def test_time_windows() -> None:
    night = TimeWindow.model_validate("22:00-06:00")
    assert (
        night.contains_minute(23 * 60)
        and night.contains_minute(60)
        and not night.contains_minute(12 * 60)
    )
    whole = TimeWindow.model_validate("00:00-24:00")
    assert whole.contains_minute(0) and whole.contains_minute(1439)
    assert str(night) == "22:00-06:00"
    for bad in ("25:00-26:00", "10:00-10:00", "noon-ish"):
        with pytest.raises(ValueError, match="time window"):
            TimeWindow.model_validate(bad)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_input_gives_lines_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    code = main(["validate", str(path), "--markets", str(MARKETS)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    for line in err.splitlines():
        assert line.startswith(str(path) + ":"), line


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(
        ["power_kw: 500", "capacity_kwh: 1000", "capacity_kwp: 400", "grid_import_limit_kw: 5000"]
    ),
    st.one_of(
        st.floats(allow_nan=True), st.text(max_size=8), st.integers(), st.none(), st.booleans()
    ),
)
def test_any_value_is_accepted_or_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object
) -> None:
    key = field.split(":", maxsplit=1)[0]
    path = tmp_path / "fuzz.yaml"
    path.write_text(
        GOOD.replace(field, f"{key}: {value!r}" if isinstance(value, str) else f"{key}: {value}")
    )
    code = main(["validate", str(path), "--markets", str(MARKETS)])
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err
    assert all(LINE_FORMAT.match(line) or line.startswith(str(path)) for line in err.splitlines())
