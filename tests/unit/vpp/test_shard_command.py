"""`vpp shard` takes the control loop's sending options from its command line."""

from __future__ import annotations

import pytest

from vpp.cli import EXIT_BAD_INPUT, build_parser, main
from vpp.commands.shard import control_options
from vpp.shard import SHARD_CONTROL_OPTIONS

REQUIRED = ["shard", "--config", "park.json", "--id", "s1", "--map", "map.yaml"]


def test_the_shard_defaults_unless_told_otherwise() -> None:
    args = build_parser().parse_args(REQUIRED)
    assert control_options(args) == SHARD_CONTROL_OPTIONS
    args = build_parser().parse_args(
        [*REQUIRED, "--fleet-deadband", "0.002", "--max-in-flight", "64"]
    )
    options = control_options(args)
    assert options.fleet_deadband_fraction == 0.002
    assert options.max_in_flight_per_adapter == 64
    assert options.send_timeout_s == SHARD_CONTROL_OPTIONS.send_timeout_s  # the rest as before


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [("--fleet-deadband", "1.5", "not a fraction"), ("--max-in-flight", "0", "not a positive")],
)
def test_bad_sending_options_are_one_line_errors(
    flag: str, value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*REQUIRED, flag, value]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"{flag}: ") and said in err
