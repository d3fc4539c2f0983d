"""Submission and award files: JSON and CSV round trips, and errors that point at the fault."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from market.formats import (
    AwardSet,
    FormatError,
    Submission,
    awards_from_csv,
    awards_from_json,
    awards_to_csv,
    awards_to_json,
    read_awards,
    read_submission,
    submission_from_csv,
    submission_from_json,
    submission_to_csv,
    submission_to_json,
    write_awards,
    write_submission,
)
from vpp.domain import Award, BidCurve, BidStep, DrEvent, DrOffer, Interval

SHANGHAI = ZoneInfo("Asia/Shanghai")
Q = timedelta(minutes=15)
T0 = datetime(2026, 3, 10, 0, 0, tzinfo=SHANGHAI)


def _submission() -> Submission:
    return Submission(
        market="cn_provincial_spot",
        participant="demo-park",
        submitted_at=datetime(2026, 3, 9, 9, 0, 0, 123000, tzinfo=SHANGHAI),
        bid_curves=(
            BidCurve(Interval(T0, Q), (BidStep(-80.0, 8000.5), BidStep(1500.0, 2000.0))),
            BidCurve(Interval(T0 + Q, Q), (BidStep(0.1, 1.0 / 3.0),)),
        ),
        dr_offers=(DrOffer(Interval(T0 + 2 * Q, Q), 1500.0, 812.25),),
    )


def _awards() -> AwardSet:
    return AwardSet(
        market="cn_provincial_spot",
        participant="demo-park",
        cleared_at=datetime(2026, 3, 9, 17, 0, tzinfo=SHANGHAI),
        awards=(
            Award(Interval(T0, Q), 8000.5, -12.5, "cn_provincial_spot"),
            Award(Interval(T0 + Q, Q), 2000.0, 1499.99, "cn_provincial_spot"),
        ),
        dr_events=(
            DrEvent(
                event_id="cn_peak_valley_dr-20260310T1800",
                product="cn_peak_valley_dr",
                start=datetime(2026, 3, 10, 18, tzinfo=SHANGHAI),
                end=datetime(2026, 3, 10, 20, tzinfo=SHANGHAI),
                notified_at=datetime(2026, 3, 9, 18, tzinfo=SHANGHAI),
                reduction_kw=-1500.0,
                price_per_mwh=800.0,
                invitation="emergency",
                opted_in=False,
            ),
        ),
    )


def test_a_submission_survives_json_and_csv_unchanged() -> None:
    original = _submission()
    assert submission_from_json(submission_to_json(original)) == original
    assert submission_from_csv(submission_to_csv(original)) == original


def test_an_award_set_survives_json_and_csv_unchanged() -> None:
    original = _awards()
    assert awards_from_json(awards_to_json(original)) == original
    assert awards_from_csv(awards_to_csv(original)) == original


def test_the_json_submission_has_the_documented_shape() -> None:
    doc = json.loads(submission_to_json(_submission()))
    assert doc["format"] == "vpp.submission/1"
    assert doc["submitted_at"] == "2026-03-09T09:00:00.123000+08:00"
    assert doc["bid_curves"][0] == {
        "start": "2026-03-10T00:00:00+08:00",
        "end": "2026-03-10T00:15:00+08:00",
        "steps": [
            {"price_up_to_per_mwh": -80.0, "power_kw": 8000.5},
            {"price_up_to_per_mwh": 1500.0, "power_kw": 2000.0},
        ],
    }
    assert doc["dr_offers"][0]["reduction_kw"] == 1500.0


def test_the_csv_submission_has_the_documented_shape() -> None:
    lines = submission_to_csv(_submission()).splitlines()
    assert lines[:5] == [
        "# format: vpp.submission/1",
        "# market: cn_provincial_spot",
        "# participant: demo-park",
        "# submitted_at: 2026-03-09T09:00:00.123000+08:00",
        "record,start,end,step,price_per_mwh,power_kw,reduction_kw",
    ]
    assert (
        lines[5] == "bid_step,2026-03-10T00:00:00+08:00,2026-03-10T00:15:00+08:00,0,-80.0,8000.5,"
    )
    assert (
        lines[-1] == "dr_offer,2026-03-10T00:30:00+08:00,2026-03-10T00:45:00+08:00,,812.25,,1500.0"
    )


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_files_are_written_and_read_by_suffix(tmp_path: Path, suffix: str) -> None:
    sub_path = write_submission(_submission(), tmp_path / f"bids{suffix}")
    award_path = write_awards(_awards(), tmp_path / f"awards{suffix}")
    assert read_submission(sub_path) == _submission()
    assert read_awards(award_path) == _awards()


def test_an_unknown_suffix_and_a_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"bids\.txt: file name must end in \.json or \.csv"):
        write_submission(_submission(), tmp_path / "bids.txt")
    with pytest.raises(FormatError, match=r"nothing\.json: file not found"):
        read_awards(tmp_path / "nothing.json")


def _csv_with(old: str, new: str) -> str:
    text = submission_to_csv(_submission())
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _csv_with("# format: vpp.submission/1", "# format: vpp.submission/2"),
            "<submission.csv>:1: format: expected '# format: vpp.submission/1', "
            "found 'vpp.submission/2'",
        ),
        (
            _csv_with(",0,-80.0,", ",0,cheap,"),
            "<submission.csv>:6: price_per_mwh: expected a number, got 'cheap'",
        ),
        (
            _csv_with(",0,-80.0,8000.5,", ",0,-80.0,inf,"),
            "<submission.csv>:6: power_kw: expected a finite number, got 'inf'",
        ),
        (
            _csv_with("dr_offer,", "dr_bonus,"),
            "<submission.csv>:9: record: unknown record 'dr_bonus': expected bid_step or dr_offer",
        ),
        (
            _csv_with(",0,-80.0,", ",2,-80.0,"),
            "<submission.csv>:7: step: steps of 2026-03-10T00:00:00+08:00 are numbered [1, 2], "
            "expected 0 to 1",
        ),
        (
            _csv_with(
                "2026-03-10T00:00:00+08:00,2026-03-10T00:15:00+08:00",
                "2026-03-10T00:00:00,2026-03-10T00:15:00+08:00",
            ),
            "<submission.csv>:6: start: input should have timezone info",
        ),
        (
            _csv_with(
                "2026-03-10T00:00:00+08:00,2026-03-10T00:15:00+08:00",
                "2026-03-10T00:15:00+08:00,2026-03-10T00:00:00+08:00",
            ),
            "<submission.csv>:6: end 2026-03-10T00:00:00+08:00 is not after start",
        ),
        (
            _csv_with("# submitted_at: 2026-03-09T09:00:00.123000+08:00", "# submitted_at: soon"),
            "<submission.csv>:4: submitted_at: input should be a valid datetime",
        ),
        (
            _csv_with("record,start", "kind,start"),
            "<submission.csv>:5: columns are kind,start,end,step,price_per_mwh,power_kw,"
            "reduction_kw; expected record,start,end,step,price_per_mwh,power_kw,reduction_kw",
        ),
        (
            _csv_with(",0,-80.0,8000.5,", ",0,-80.0,8000.5,,extra,"),
            "<submission.csv>:6: 9 fields, expected 7",
        ),
    ],
)
def test_a_broken_submission_csv_names_its_line_and_column(text: str, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        submission_from_csv(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "<awards>: format: input should be 'vpp.awards/1'"),
        (lambda d: d.pop("market"), "<awards>: market: missing required field"),
        (lambda d: d.update(colour="red"), "<awards>: colour: unknown key"),
        (
            lambda d: d["awards"][1].update(power_kw="lots"),
            "<awards>: awards[1].power_kw: input should be a valid number",
        ),
        (
            lambda d: d["dr_events"][0].update(invitation="whenever"),
            "<awards>: dr_events[0].invitation: input should be 'day_ahead', 'intraday' or "
            "'emergency'",
        ),
    ],
)
def test_a_broken_award_json_names_its_field(change: object, message: str) -> None:
    doc = json.loads(awards_to_json(_awards()))
    change(doc)  # type: ignore[operator]
    with pytest.raises(FormatError) as caught:
        awards_from_json(json.dumps(doc))
    assert str(caught.value).startswith(message)


def test_malformed_json_names_its_line() -> None:
    with pytest.raises(FormatError, match=r"^<awards>:3: invalid JSON"):
        awards_from_json('{\n  "format": "vpp.awards/1",\n  oops\n}')


def test_a_broken_award_csv_names_its_line() -> None:
    text = awards_to_csv(_awards()).replace(",false", ",maybe")
    with pytest.raises(FormatError, match=r"^<awards.csv>:8: opted_in: expected true or false"):
        awards_from_csv(text)
