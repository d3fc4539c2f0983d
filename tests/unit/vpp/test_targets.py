"""The park target in force from schedule, awards, DR events and overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vpp.domain import Award, DrEvent, Interval
from vpp.targets import TargetBook, TargetSource

T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
QUARTER = timedelta(minutes=15)


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def event(event_id: str, start: float, end: float, reduction_kw: float, notified: float) -> DrEvent:
    return DrEvent(
        event_id=event_id,
        product="peak",
        start=minutes(start),
        end=minutes(end),
        notified_at=minutes(notified),
        reduction_kw=reduction_kw,
        price_per_mwh=500.0,
    )


def test_nothing_in_force_means_no_target() -> None:
    assert TargetBook().target_at(T0, measured_kw=100.0) is None


def test_schedule_gives_the_baseline_per_interval() -> None:
    book = TargetBook()
    book.set_schedule(T0, QUARTER, [1000.0, 1200.0])
    first = book.target_at(minutes(5))
    assert first is not None
    assert (first.power_kw, first.baseline_kw, first.source) == (1000.0, 1000.0, "schedule")
    assert first.deviation_kw == 0.0
    assert first.notice_min is None
    second = book.target_at(minutes(15))
    assert second is not None
    assert second.power_kw == 1200.0
    assert book.target_at(minutes(30)) is None
    assert book.target_at(minutes(-1)) is None


def test_new_schedule_replaces_only_what_it_covers() -> None:
    book = TargetBook()
    book.set_schedule(T0, QUARTER, [1.0, 2.0, 3.0])
    book.set_schedule(minutes(15), QUARTER, [20.0])
    assert [book.scheduled_at(minutes(m)) for m in (0, 15, 30)] == [1.0, 20.0, 3.0]


def test_award_replaces_the_baseline_and_is_a_deviation() -> None:
    book = TargetBook()
    book.set_schedule(T0, QUARTER, [1000.0])
    book.add_award(Award(Interval(T0, QUARTER), 700.0, 320.0, "spot"), received_at=minutes(-60))
    target = book.target_at(minutes(10))
    assert target is not None
    assert target.power_kw == 700.0
    assert target.deviation_kw == -300.0
    assert target.source is TargetSource.AWARD
    assert target.notice_min == pytest.approx(70.0)


def test_dr_events_reduce_the_target_and_add_up() -> None:
    book = TargetBook()
    book.set_schedule(T0, QUARTER, [1000.0])
    book.add_event(event("e1", 0, 10, 200.0, notified=-30))
    book.add_event(event("e2", 5, 15, 50.0, notified=-2))
    early = book.target_at(minutes(1))
    both = book.target_at(minutes(6))
    late = book.target_at(minutes(12))
    assert early is not None
    assert both is not None
    assert late is not None
    assert (early.power_kw, both.power_kw, late.power_kw) == (800.0, 750.0, 950.0)
    assert both.source is TargetSource.DR_EVENT
    assert both.label == "e1,e2"
    # The newest part of the deviation was announced 8 minutes before 08:06.
    assert both.notice_min == pytest.approx(8.0)
    assert book.cancel_event("e2")
    after = book.target_at(minutes(6))
    assert after is not None
    assert after.power_kw == 800.0
    assert not book.cancel_event("e2")


def test_event_without_schedule_is_measured_against_park_power_at_its_start() -> None:
    book = TargetBook()
    book.add_event(event("e1", 0, 10, 300.0, notified=-30))
    assert book.target_at(minutes(0), measured_kw=None) is None
    first = book.target_at(minutes(1), measured_kw=2000.0)
    later = book.target_at(minutes(2), measured_kw=1750.0)
    assert first is not None
    assert later is not None
    assert first.power_kw == later.power_kw == 1700.0
    assert later.baseline_kw == 2000.0


def test_override_beats_everything_until_it_ends() -> None:
    book = TargetBook()
    book.set_schedule(T0, QUARTER, [1000.0])
    book.add_event(event("e1", 0, 15, 200.0, notified=-30))
    book.set_override(500.0, minutes(5), minutes(6))
    during = book.target_at(minutes(5.5))
    assert during is not None
    assert (during.power_kw, during.baseline_kw, during.source) == (500.0, 1000.0, "override")
    assert during.notice_min == pytest.approx(0.5)
    after = book.target_at(minutes(6))
    assert after is not None
    assert after.power_kw == 800.0
    version = book.version
    book.clear_override()
    assert book.version == version + 1


def test_prune_forgets_what_ended() -> None:
    book = TargetBook()
    book.set_schedule(T0, QUARTER, [1.0, 2.0])
    book.add_event(event("e1", 0, 10, 1.0, notified=-30))
    book.prune(minutes(15))
    assert book.scheduled_at(minutes(0)) is None
    assert book.scheduled_at(minutes(16)) == 2.0
    assert book.active_events(minutes(5)) == []


def test_bad_inputs_are_refused_with_their_name() -> None:
    book = TargetBook()
    with pytest.raises(ValueError, match="timezone-aware"):
        book.set_schedule(datetime(2024, 1, 1), QUARTER, [1.0])  # noqa: DTZ001
    with pytest.raises(ValueError, match="non-finite"):
        book.set_schedule(T0, QUARTER, [float("nan")])
    with pytest.raises(ValueError, match="ends before"):
        book.set_override(1.0, minutes(5), minutes(5))
    with pytest.raises(ValueError, match="e9 ends before"):
        book.add_event(event("e9", 5, 5, 1.0, notified=0))
