"""One wording for validation errors, whether the fault is in the enrollment or a market file."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from market.formats import AwardSet, FormatError, awards_from_json, awards_to_json
from vpp.config import load_park
from vpp.config.messages import validation_message
from vpp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    power_kw: float
    label: Annotated[str, Field(max_length=3)] = ""
    token_env: Annotated[str, Field(pattern=r"^[A-Z_]+$")] = "TOKEN"
    limits: dict[str, float] = Field(default_factory=dict)

    @field_validator("label")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if " " in value:
            raise ValueError("Label has a space")
        return value


def first_error(data: object) -> ErrorDetails:
    with pytest.raises(ValidationError) as caught:
        _Doc.model_validate(data)
    return caught.value.errors(include_url=False)[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"power_kw": 1, "colour": "red"}, "unknown key"),
        ({}, "missing required field"),
        (
            {"power_kw": "lots"},
            "input should be a valid number, unable to parse string as a number (got 'lots')",
        ),
        ({"power_kw": 1, "label": "a b"}, "label has a space"),  # no "Value error, ", lower case
        ({"power_kw": 1, "label": "long"}, "string should have at most 3 characters (got 'long')"),
        # a value that may be a secret typed into the wrong field is never echoed back
        ({"power_kw": 1, "token_env": "s3cr3t-value"}, "string should match pattern '^[A-Z_]+$'"),
        ({"power_kw": 1, "limits": [1, 2]}, "input should be a valid dictionary"),  # no list quoted
    ],
)
def test_one_line_message_per_kind_of_fault(data: object, message: str) -> None:
    assert validation_message(first_error(data)) == message


def test_an_unknown_key_reads_the_same_in_a_market_file_and_the_enrollment(
    tmp_path: Path,
) -> None:
    awards = json.loads(awards_to_json(AwardSet("spot", "p1", datetime(2026, 7, 1, tzinfo=UTC))))
    awards["colour"] = "red"
    with pytest.raises(FormatError) as format_error:
        awards_from_json(json.dumps(awards))
    park = tmp_path / "park.yaml"
    park.write_text(
        textwrap.dedent(
            """\
            id: p1
            name: Test park
            colour: red
            location: {latitude_deg: 31.2, longitude_deg: 121.5}
            grid_import_limit_kw: 5000
            market: {rule_set: cn_provincial_spot}
            enterprises: []
            """
        )
    )
    with pytest.raises(ConfigError) as config_error:
        load_park(park, ROOT / "config/markets")
    assert str(format_error.value).endswith(": colour: unknown key")
    assert any(
        line.endswith(": colour: unknown key") for line in str(config_error.value).splitlines()
    )
