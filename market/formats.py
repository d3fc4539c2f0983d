"""Submission and award files: the documented JSON and CSV formats the market side exchanges.

A submission carries the park's bid curves and DR offers for one market; an award set carries
what the market cleared (awards per interval) and the DR events it called. Both are written and
read back in JSON (`vpp.submission/1`, `vpp.awards/1`) and CSV (the same records, one per row,
with `# key: value` header lines). docs/market.md describes every field. Reading validates the
file and raises `FormatError` naming the file, line and field at fault.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from vpp.config.messages import validation_message
from vpp.config.yamlsource import dotted
from vpp.domain import Award, BidCurve, BidStep, DrEvent, DrOffer, Interval
from vpp.errors import VPPError

SUBMISSION_FORMAT = "vpp.submission/1"
AWARDS_FORMAT = "vpp.awards/1"
SUBMISSION_CSV_COLUMNS = (
    "record",
    "start",
    "end",
    "step",
    "price_per_mwh",
    "power_kw",
    "reduction_kw",
)
AWARDS_CSV_COLUMNS = (
    "record",
    "id",
    "start",
    "end",
    "power_kw",
    "reduction_kw",
    "price_per_mwh",
    "notified_at",
    "product",
    "invitation",
    "opted_in",
)
MAX_FILE_BYTES = 50 * 1024 * 1024


class FormatError(VPPError):
    """A submission or award file is malformed; `source`, `line` and `field` locate the fault."""

    def __init__(self, source: str, line: int | None, field: str, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}:{f' {field}:' if field else ''} {message}")


@dataclass(frozen=True, slots=True)
class Submission:
    """What the park sends to one market: bid curves and/or DR offers, stamped with a time."""

    market: str
    participant: str
    submitted_at: datetime
    bid_curves: tuple[BidCurve, ...] = ()
    dr_offers: tuple[DrOffer, ...] = ()


@dataclass(frozen=True, slots=True)
class AwardSet:
    """What one market sent back: cleared power per interval and the DR events it called."""

    market: str
    participant: str
    cleared_at: datetime
    awards: tuple[Award, ...] = ()
    dr_events: tuple[DrEvent, ...] = ()


# --- payload models (the edge: validated, then turned into domain types) ---------------------

Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class _Span(_Doc):
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> _Span:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start")
        return self

    def interval(self) -> Interval:
        return Interval(self.start, self.end - self.start)


class _Step(_Doc):
    price_up_to_per_mwh: Finite
    power_kw: Finite


class _Curve(_Span):
    steps: list[_Step] = Field(min_length=1, max_length=1000)


class _Offer(_Span):
    reduction_kw: Finite
    price_per_mwh: Finite


class _SubmissionDoc(_Doc):
    format: Literal["vpp.submission/1"]
    market: Text
    participant: Text
    submitted_at: AwareDatetime
    bid_curves: list[_Curve] = Field(default_factory=list)
    dr_offers: list[_Offer] = Field(default_factory=list)


class _Award(_Span):
    power_kw: Finite
    price_per_mwh: Finite


class _Event(_Span):
    event_id: Text
    product: Text
    notified_at: AwareDatetime
    reduction_kw: Finite
    price_per_mwh: Finite
    invitation: Literal["day_ahead", "intraday", "emergency"] = "day_ahead"
    opted_in: bool = True


class _AwardsDoc(_Doc):
    format: Literal["vpp.awards/1"]
    market: Text
    participant: Text
    cleared_at: AwareDatetime
    awards: list[_Award] = Field(default_factory=list)
    dr_events: list[_Event] = Field(default_factory=list)


ModelT = TypeVar("ModelT", bound=BaseModel)


def _span(interval: Interval) -> dict[str, str]:
    return {"start": interval.start.isoformat(), "end": interval.end.isoformat()}


# --- JSON ------------------------------------------------------------------------------------


def submission_to_json(submission: Submission) -> str:
    """The submission as `vpp.submission/1` JSON text."""
    doc = {
        "format": SUBMISSION_FORMAT,
        "market": submission.market,
        "participant": submission.participant,
        "submitted_at": submission.submitted_at.isoformat(),
        "bid_curves": [
            {
                **_span(curve.interval),
                "steps": [
                    {"price_up_to_per_mwh": s.price_up_to_per_mwh, "power_kw": s.power_kw}
                    for s in curve.steps
                ],
            }
            for curve in submission.bid_curves
        ],
        "dr_offers": [
            {
                **_span(offer.interval),
                "reduction_kw": offer.reduction_kw,
                "price_per_mwh": offer.price_per_mwh,
            }
            for offer in submission.dr_offers
        ],
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def submission_from_json(text: str, source: str = "<submission>") -> Submission:
    """Parse `vpp.submission/1` JSON; raise FormatError naming the field at fault."""
    doc = _validate_json(_SubmissionDoc, text, source)
    return _submission(doc)


def awards_to_json(awards: AwardSet) -> str:
    """The award set as `vpp.awards/1` JSON text."""
    doc = {
        "format": AWARDS_FORMAT,
        "market": awards.market,
        "participant": awards.participant,
        "cleared_at": awards.cleared_at.isoformat(),
        "awards": [
            {**_span(a.interval), "power_kw": a.power_kw, "price_per_mwh": a.price_per_mwh}
            for a in awards.awards
        ],
        "dr_events": [
            {
                "event_id": e.event_id,
                "product": e.product,
                "start": e.start.isoformat(),
                "end": e.end.isoformat(),
                "notified_at": e.notified_at.isoformat(),
                "reduction_kw": e.reduction_kw,
                "price_per_mwh": e.price_per_mwh,
                "invitation": e.invitation,
                "opted_in": e.opted_in,
            }
            for e in awards.dr_events
        ],
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def awards_from_json(text: str, source: str = "<awards>") -> AwardSet:
    """Parse `vpp.awards/1` JSON; raise FormatError naming the field at fault."""
    return _award_set(_validate_json(_AwardsDoc, text, source))


def _validate_json(model: type[ModelT], text: str, source: str) -> ModelT:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FormatError(source, err.lineno, "", f"invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise FormatError(source, 1, "", f"expected a JSON object, found {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        item = err.errors(include_url=False)[0]
        raise FormatError(source, None, dotted(item["loc"]), validation_message(item)) from None


# --- CSV -------------------------------------------------------------------------------------


def submission_to_csv(submission: Submission) -> str:
    """The submission as CSV: header lines, then one `bid_step` or `dr_offer` record a row."""
    out = io.StringIO()
    out.write(f"# format: {SUBMISSION_FORMAT}\n")
    out.write(f"# market: {submission.market}\n")
    out.write(f"# participant: {submission.participant}\n")
    out.write(f"# submitted_at: {submission.submitted_at.isoformat()}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SUBMISSION_CSV_COLUMNS)
    for curve in submission.bid_curves:
        span = _span(curve.interval)
        for index, step in enumerate(curve.steps):
            writer.writerow(
                [
                    "bid_step",
                    span["start"],
                    span["end"],
                    index,
                    repr(step.price_up_to_per_mwh),
                    repr(step.power_kw),
                    "",
                ]
            )
    for offer in submission.dr_offers:
        span = _span(offer.interval)
        writer.writerow(
            [
                "dr_offer",
                span["start"],
                span["end"],
                "",
                repr(offer.price_per_mwh),
                "",
                repr(offer.reduction_kw),
            ]
        )
    return out.getvalue()


def submission_from_csv(text: str, source: str = "<submission.csv>") -> Submission:
    """Parse a submission CSV; raise FormatError naming the line and column at fault."""
    header, rows = _read_csv(text, source, SUBMISSION_CSV_COLUMNS)
    _check_format(header, SUBMISSION_FORMAT, source)
    curves: dict[tuple[datetime, datetime], list[tuple[int, _Step, int]]] = {}
    offers: list[_Offer] = []
    for line, row in rows:
        kind = row["record"]
        if kind == "bid_step":
            number = _int(row["step"], source, line, "step")
            step = _row_model(
                _Step,
                {
                    "price_up_to_per_mwh": _float(
                        row["price_per_mwh"], source, line, "price_per_mwh"
                    ),
                    "power_kw": _float(row["power_kw"], source, line, "power_kw"),
                },
                source,
                line,
            )
            span = _row_model(_Span, {"start": row["start"], "end": row["end"]}, source, line)
            curves.setdefault((span.start, span.end), []).append((number, step, line))
        elif kind == "dr_offer":
            offers.append(
                _row_model(
                    _Offer,
                    {
                        "start": row["start"],
                        "end": row["end"],
                        "price_per_mwh": _float(
                            row["price_per_mwh"], source, line, "price_per_mwh"
                        ),
                        "reduction_kw": _float(row["reduction_kw"], source, line, "reduction_kw"),
                    },
                    source,
                    line,
                )
            )
        else:
            raise FormatError(
                source, line, "record", f"unknown record {kind!r}: expected bid_step or dr_offer"
            )
    curve_items = []
    for (start, end), steps in curves.items():
        steps.sort(key=lambda s: s[0])
        numbers = [s[0] for s in steps]
        if numbers != list(range(len(steps))):
            raise FormatError(
                source,
                steps[0][2],
                "step",
                f"steps of {start.isoformat()} are numbered {numbers}, expected 0 to "
                f"{len(steps) - 1}",
            )
        curve_items.append(
            {"start": start, "end": end, "steps": [s[1].model_dump() for s in steps]}
        )
    doc = _header_doc(
        _SubmissionDoc,
        header,
        {"bid_curves": curve_items, "dr_offers": [o.model_dump() for o in offers]},
        source,
    )
    return _submission(doc)


def awards_to_csv(awards: AwardSet) -> str:
    """The award set as CSV: header lines, then one `award` or `dr_event` record a row."""
    out = io.StringIO()
    out.write(f"# format: {AWARDS_FORMAT}\n")
    out.write(f"# market: {awards.market}\n")
    out.write(f"# participant: {awards.participant}\n")
    out.write(f"# cleared_at: {awards.cleared_at.isoformat()}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(AWARDS_CSV_COLUMNS)
    for award in awards.awards:
        span = _span(award.interval)
        writer.writerow(
            [
                "award",
                "",
                span["start"],
                span["end"],
                repr(award.power_kw),
                "",
                repr(award.price_per_mwh),
                "",
                "",
                "",
                "",
            ]
        )
    for event in awards.dr_events:
        writer.writerow(
            [
                "dr_event",
                event.event_id,
                event.start.isoformat(),
                event.end.isoformat(),
                "",
                repr(event.reduction_kw),
                repr(event.price_per_mwh),
                event.notified_at.isoformat(),
                event.product,
                event.invitation,
                "true" if event.opted_in else "false",
            ]
        )
    return out.getvalue()


def awards_from_csv(text: str, source: str = "<awards.csv>") -> AwardSet:
    """Parse an award CSV; raise FormatError naming the line and column at fault."""
    header, rows = _read_csv(text, source, AWARDS_CSV_COLUMNS)
    _check_format(header, AWARDS_FORMAT, source)
    awards: list[_Award] = []
    events: list[_Event] = []
    for line, row in rows:
        kind = row["record"]
        if kind == "award":
            awards.append(
                _row_model(
                    _Award,
                    {
                        "start": row["start"],
                        "end": row["end"],
                        "power_kw": _float(row["power_kw"], source, line, "power_kw"),
                        "price_per_mwh": _float(
                            row["price_per_mwh"], source, line, "price_per_mwh"
                        ),
                    },
                    source,
                    line,
                )
            )
        elif kind == "dr_event":
            opted = row["opted_in"].lower()
            if opted not in ("true", "false"):
                raise FormatError(
                    source, line, "opted_in", f"expected true or false, got {opted!r}"
                )
            events.append(
                _row_model(
                    _Event,
                    {
                        "event_id": row["id"],
                        "product": row["product"],
                        "start": row["start"],
                        "end": row["end"],
                        "notified_at": row["notified_at"],
                        "reduction_kw": _float(row["reduction_kw"], source, line, "reduction_kw"),
                        "price_per_mwh": _float(
                            row["price_per_mwh"], source, line, "price_per_mwh"
                        ),
                        "invitation": row["invitation"],
                        "opted_in": opted == "true",
                    },
                    source,
                    line,
                )
            )
        else:
            raise FormatError(
                source, line, "record", f"unknown record {kind!r}: expected award or dr_event"
            )
    doc = _header_doc(
        _AwardsDoc,
        header,
        {
            "awards": [a.model_dump() for a in awards],
            "dr_events": [e.model_dump() for e in events],
        },
        source,
    )
    return _award_set(doc)


def _read_csv(
    text: str, source: str, columns: tuple[str, ...]
) -> tuple[dict[str, tuple[str, int]], Iterator[tuple[int, dict[str, str]]]]:
    lines = text.splitlines()
    header: dict[str, tuple[str, int]] = {}
    index = 0
    while index < len(lines) and (lines[index].startswith("#") or not lines[index].strip()):
        raw = lines[index].lstrip("#").strip()
        if raw:
            key, sep, value = raw.partition(":")
            if not sep:
                raise FormatError(source, index + 1, "", "header line must read '# key: value'")
            header[key.strip()] = (value.strip(), index + 1)
        index += 1
    if index >= len(lines):
        raise FormatError(source, None, "", "no column header line")
    reader = csv.reader(lines[index:])
    found = tuple(c.strip() for c in next(reader))
    if found != columns:
        raise FormatError(
            source, index + 1, "", f"columns are {','.join(found)}; expected {','.join(columns)}"
        )
    first_data_line = index + 2

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for offset, values in enumerate(reader):
            line = first_data_line + offset
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(columns):
                raise FormatError(
                    source, line, "", f"{len(values)} fields, expected {len(columns)}"
                )
            yield line, {c: v.strip() for c, v in zip(columns, values, strict=True)}

    return header, rows()


def _check_format(header: dict[str, tuple[str, int]], expected: str, source: str) -> None:
    value, line = header.get("format", ("", 1))
    if value != expected:
        raise FormatError(
            source, line, "format", f"expected '# format: {expected}', found {value!r}"
        )


def _header_doc(
    model: type[ModelT], header: dict[str, tuple[str, int]], body: dict[str, Any], source: str
) -> ModelT:
    """Validate the header values together with the already validated records."""
    data: dict[str, Any] = {key: value for key, (value, _) in header.items()}
    data.update(body)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        item = err.errors(include_url=False)[0]
        key = str(item["loc"][0]) if item["loc"] else ""
        line = header[key][1] if key in header else None
        raise FormatError(source, line, dotted(item["loc"]), validation_message(item)) from None


def _row_model(model: type[ModelT], data: dict[str, Any], source: str, line: int) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        item = err.errors(include_url=False)[0]
        raise FormatError(source, line, dotted(item["loc"]), validation_message(item)) from None


def _float(text: str, source: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FormatError(source, line, column, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise FormatError(source, line, column, f"expected a finite number, got {text!r}")
    return value


def _int(text: str, source: str, line: int, column: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FormatError(source, line, column, f"expected an integer, got {text!r}") from None


# --- files -----------------------------------------------------------------------------------


def write_submission(submission: Submission, path: Path | str) -> Path:
    """Write the submission as JSON or CSV, chosen by the file's suffix."""
    return _write(path, submission, submission_to_json, submission_to_csv)


def read_submission(path: Path | str) -> Submission:
    """Read a submission file (`.json` or `.csv`)."""
    return _read(path, submission_from_json, submission_from_csv)


def write_awards(awards: AwardSet, path: Path | str) -> Path:
    """Write the award set as JSON or CSV, chosen by the file's suffix."""
    return _write(path, awards, awards_to_json, awards_to_csv)


def read_awards(path: Path | str) -> AwardSet:
    """Read an award file (`.json` or `.csv`)."""
    return _read(path, awards_from_json, awards_from_csv)


T = TypeVar("T")


def _write(
    path: Path | str, value: T, as_json: Callable[[T], str], as_csv: Callable[[T], str]
) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise FormatError(str(path), None, "", "file name must end in .json or .csv")
    text = as_json(value) if suffix == ".json" else as_csv(value)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise FormatError(str(path), None, "", f"cannot write: {err.strerror}") from err
    return path


def _read(
    path: Path | str,
    from_json: Callable[[str, str], T],
    from_csv: Callable[[str, str], T],
) -> T:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise FormatError(str(path), None, "", "file name must end in .json or .csv")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise FormatError(str(path), None, "", f"file is larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FormatError(str(path), None, "", "file not found") from None
    except UnicodeDecodeError as err:
        raise FormatError(str(path), None, "", f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise FormatError(str(path), None, "", f"cannot read: {err.strerror}") from err
    return from_json(text, str(path)) if suffix == ".json" else from_csv(text, str(path))


# --- shared ----------------------------------------------------------------------------------


def _submission(doc: _SubmissionDoc) -> Submission:
    return Submission(
        market=doc.market,
        participant=doc.participant,
        submitted_at=doc.submitted_at,
        bid_curves=tuple(
            BidCurve(
                c.interval(),
                tuple(BidStep(s.price_up_to_per_mwh, s.power_kw) for s in c.steps),
            )
            for c in doc.bid_curves
        ),
        dr_offers=tuple(
            DrOffer(o.interval(), o.reduction_kw, o.price_per_mwh) for o in doc.dr_offers
        ),
    )


def _award_set(doc: _AwardsDoc) -> AwardSet:
    return AwardSet(
        market=doc.market,
        participant=doc.participant,
        cleared_at=doc.cleared_at,
        awards=tuple(
            Award(a.interval(), a.power_kw, a.price_per_mwh, doc.market) for a in doc.awards
        ),
        dr_events=tuple(
            DrEvent(
                event_id=e.event_id,
                product=e.product,
                start=e.start,
                end=e.end,
                notified_at=e.notified_at,
                reduction_kw=e.reduction_kw,
                price_per_mwh=e.price_per_mwh,
                invitation=e.invitation,
                opted_in=e.opted_in,
            )
            for e in doc.dr_events
        ),
    )
