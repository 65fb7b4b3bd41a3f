"""The timeline: exact UTC instants across daylight saving, and the DAG each event fires."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mai_ops.challenge.config import Challenge, load_challenge
from mai_ops.challenge.dates import (
    EventDate,
    local_instant,
    parse_event_date,
    parse_time_of_day,
    utc_iso,
    zone,
)
from mai_ops.challenge.timeline import (
    DagPhase,
    events_at,
    phase_instants,
    reminders_at,
    timeline_rows,
)
from mai_ops.cli import main

UTC = dt.UTC
CHALLENGES = Path(__file__).resolve().parent.parent / "include" / "challenges"


@pytest.fixture(autouse=True)
def _shipped_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAI_OPS_CHALLENGES_DIR", raising=False)


def raw(challenge_id: str) -> dict[str, Any]:
    return yaml.safe_load((CHALLENGES / f"{challenge_id}.yaml").read_text(encoding="utf-8"))


def json_rows(challenge_id: str, capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    capsys.readouterr()
    assert main(["timeline", challenge_id, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    rows = json.loads(out.out)
    assert isinstance(rows, list)
    by_name = {row["name"]: row for row in rows}
    assert len(by_name) == len(rows)
    return by_name


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- mai-ops timeline


def test_mai2021_json_instants(capsys: pytest.CaptureFixture[str]) -> None:
    rows = json_rows("mai2021", capsys)
    assert list(rows) == [e["name"] for e in raw("mai2021")["timeline"]]
    for row in rows.values():
        assert {"name", "local", "utc", "dag_id"} <= row.keys()

    # January: PST, UTC-8.
    assert rows["train_data_release"]["utc"] == "2021-01-16T01:00:00Z"
    assert rows["train_data_release"]["local"] == "2021-01-15T17:00:00-08:00"
    assert rows["train_data_release"]["dag_id"] == "mai2021__release_data"
    assert rows["validation_server_online"]["utc"] == "2021-01-21T01:00:00Z"
    assert rows["validation_server_online"]["dag_id"] == "mai2021__validation_server"
    # Daylight saving started on 14 March 2021: PDT, UTC-7.
    assert rows["test_data_release"]["utc"] == "2021-03-16T00:00:00Z"
    assert rows["final_deadline"]["utc"] == "2021-03-21T00:00:00Z"
    assert rows["final_deadline"]["local"] == "2021-03-20T17:00:00-07:00"
    assert rows["final_deadline"]["dag_id"] == "mai2021__final_collection"
    assert rows["preliminary_results"]["utc"] == "2021-03-23T00:00:00Z"
    assert rows["preliminary_results"]["dag_id"] == "mai2021__preliminary_results"
    # Events without a phase are listed but fire no DAG.
    assert rows["website_online"]["dag_id"] is None
    assert rows["factsheet_deadline"]["dag_id"] is None
    assert rows["paper_server_online"]["dag_id"] == "mai2021__workshop_notices"


def test_mai2021_workshop_day_is_not_fixed(capsys: pytest.CaptureFixture[str]) -> None:
    row = json_rows("mai2021", capsys)["workshop_day"]
    assert row["utc"] is None
    assert row["local"] is None
    assert row["fixed"] is False
    assert row["date"] == "June XX 2021"
    # The DAG exists (it shows in the UI), it just has nothing scheduled.
    assert row["dag_id"] == "mai2021__workshop_notices"


def test_mai2021_reminders_cross_daylight_saving(capsys: pytest.CaptureFixture[str]) -> None:
    reminders = {
        r["days_before"]: r for r in json_rows("mai2021", capsys)["final_deadline"]["reminders"]
    }
    assert set(reminders) == {7, 1}
    # 7 days before: 13 March 17:00 PST, the day before the clocks changed.
    assert reminders[7]["utc"] == "2021-03-14T01:00:00Z"
    # 1 day before: 19 March 17:00 PDT.
    assert reminders[1]["utc"] == "2021-03-20T00:00:00Z"
    assert {r["dag_id"] for r in reminders.values()} == {"mai2021__reminders"}


def test_mai2023_json_instants(capsys: pytest.CaptureFixture[str]) -> None:
    rows = json_rows("mai2023", capsys)
    for row in rows.values():
        assert {"name", "local", "utc", "dag_id"} <= row.keys()
    for name in ("paper_decision", "camera_ready"):
        assert rows[name]["utc"] is None
        assert rows[name]["local"] is None
        assert rows[name]["date"] == "April 2023"
        # Reminders of an unfixed date are not scheduled either.
        assert rows[name]["reminders"] == []
    # The workshop programme starts at 08:00 PDT.
    assert rows["workshop_day"]["utc"] == "2023-06-19T15:00:00Z"
    assert rows["workshop_day"]["local"] == "2023-06-19T08:00:00-07:00"
    assert rows["workshop_day"]["dag_id"] == "mai2023__workshop_notices"
    # The paper deadline (10 March) is still PST; DST began on 12 March 2023.
    assert rows["paper_deadline"]["utc"] == "2023-03-11T01:00:00Z"


def test_plain_output_mentions_unfixed_dates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["timeline", "mai2021"]) == 0
    out = capsys.readouterr().out
    assert "America/Los_Angeles" in out
    (line,) = [line for line in out.splitlines() if "workshop_day" in line]
    assert "June XX 2021" in line
    assert "not fixed" in line
    (line,) = [line for line in out.splitlines() if line.split()[:1] == ["final_deadline"]]
    assert "2021-03-21T00:00:00Z" in line
    assert "mai2021__final_collection" in line
    assert "reminder 7d before" in out


def test_unknown_challenge_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["timeline", "mai1999", "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "no challenge 'mai1999'" in out.err
    assert "mai2021" in out.err  # the known ids are listed


def test_timeline_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = raw("mai2021")
    doc["timezone"] = "Europe/Zurich"
    path = tmp_path / "zurich.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert main(["timeline", "ignored", "--file", str(path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["final_deadline"]["utc"] == "2021-03-20T16:00:00Z"


def test_timeline_of_an_invalid_file_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = raw("mai2021")
    doc["timezone"] = "Mars/Olympus"
    path = tmp_path / "mars.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert main(["timeline", "mai2021", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: timezone:" in err
    assert "Mars/Olympus" in err


# --------------------------------------------------------------------------- scheduling


def test_phase_instants_mai2021() -> None:
    phases = phase_instants(load_challenge(CHALLENGES / "mai2021.yaml"))
    assert list(phases) == [
        DagPhase.RELEASE_DATA,
        DagPhase.VALIDATION_SERVER,
        DagPhase.VALIDATION_UPLOADS,
        DagPhase.FINAL_COLLECTION,
        DagPhase.SCORING,
        DagPhase.PRELIMINARY_RESULTS,
        DagPhase.REMINDERS,
        DagPhase.WORKSHOP_NOTICES,
    ]
    assert phases[DagPhase.VALIDATION_UPLOADS] == []  # each upload is an event, plus a sweep
    assert phases[DagPhase.RELEASE_DATA] == [utc(2021, 1, 16, 1), utc(2021, 3, 16, 0)]
    assert phases[DagPhase.VALIDATION_SERVER] == [utc(2021, 1, 21, 1)]
    assert phases[DagPhase.FINAL_COLLECTION] == [utc(2021, 3, 21, 0)]
    assert phases[DagPhase.SCORING] == []  # follows the frozen set, not a date
    assert phases[DagPhase.PRELIMINARY_RESULTS] == [utc(2021, 3, 23, 0)]
    # workshop_day (June XX) is not scheduled.
    assert phases[DagPhase.WORKSHOP_NOTICES] == [
        utc(2021, 1, 16, 1),
        utc(2021, 4, 6, 0),
        utc(2021, 4, 16, 0),
    ]
    # 7 and 1 days before final_deadline, challenge_paper_deadline, paper_deadline, camera_ready.
    assert len(phases[DagPhase.REMINDERS]) == 8
    assert utc(2021, 3, 14, 1) in phases[DagPhase.REMINDERS]
    for instants in phases.values():
        assert instants == sorted(set(instants))
        assert all(i.utcoffset() == dt.timedelta(0) for i in instants)


def test_phase_instants_mai2023() -> None:
    phases = phase_instants(load_challenge(CHALLENGES / "mai2023.yaml"))
    assert list(phases) == [DagPhase.REMINDERS, DagPhase.WORKSHOP_NOTICES]
    assert phases[DagPhase.WORKSHOP_NOTICES] == [utc(2023, 2, 21, 1), utc(2023, 6, 19, 15)]
    # Only paper_deadline's reminders: camera_ready ("April") has no date to count back from.
    assert phases[DagPhase.REMINDERS] == [utc(2023, 3, 4, 1), utc(2023, 3, 10, 1)]


def test_phase_instants_deduplicate_shared_instants() -> None:
    doc = raw("mai2021")
    doc["timeline"].append(
        {"name": "extra_release", "title": "Extra", "date": "2021-01-15", "phase": "release_data"}
    )
    factsheet = next(e for e in doc["timeline"] if e["name"] == "factsheet_deadline")
    factsheet["remind_days_before"] = [7, 1]  # the same instants as final_deadline's
    ch = Challenge.model_validate(doc)

    phases = phase_instants(ch)
    assert phases[DagPhase.RELEASE_DATA] == [utc(2021, 1, 16, 1), utc(2021, 3, 16, 0)]
    assert len(phases[DagPhase.REMINDERS]) == 8
    for instants in phases.values():
        assert instants == sorted(set(instants))

    # One run at the shared instant handles every event and reminder due then.
    fired = events_at(ch, DagPhase.RELEASE_DATA, utc(2021, 1, 16, 1))
    assert [e.name for e in fired] == ["train_data_release", "extra_release"]
    due = reminders_at(ch, utc(2021, 3, 14, 1))
    assert sorted(r.key for r in due) == ["factsheet_deadline-7d", "final_deadline-7d"]


def test_events_at() -> None:
    ch = load_challenge(CHALLENGES / "mai2021.yaml")
    fired = events_at(ch, "release_data", dt.datetime(2021, 3, 16, 0, tzinfo=UTC))
    assert [e.name for e in fired] == ["test_data_release"]
    # The same instant given in local time.
    pdt = dt.datetime(2021, 3, 15, 17, tzinfo=zone("America/Los_Angeles"))
    assert [e.name for e in events_at(ch, "release_data", pdt)] == ["test_data_release"]
    assert [e.name for e in events_at(ch, "release_data", utc(2021, 1, 16, 1))] == [
        "train_data_release"
    ]
    # paper_deadline is at the same instant but fires no DAG; another phase is not matched.
    assert events_at(ch, "workshop_notices", utc(2021, 3, 16, 0)) == []
    # One hour off (the mistake DST would cause) matches nothing.
    assert events_at(ch, "release_data", utc(2021, 3, 16, 1)) == []
    assert events_at(ch, "release_data", utc(2021, 3, 15, 23)) == []


def test_reminders_at() -> None:
    ch = load_challenge(CHALLENGES / "mai2021.yaml")
    (reminder,) = reminders_at(ch, utc(2021, 3, 14, 1))
    assert (reminder.event, reminder.days_before, reminder.key) == (
        "final_deadline",
        7,
        "final_deadline-7d",
    )
    assert reminder.instant == dt.datetime(2021, 3, 13, 17, tzinfo=zone("America/Los_Angeles"))
    assert reminders_at(ch, utc(2021, 3, 14, 0)) == []


def test_timeline_rows_for_a_built_challenge() -> None:
    doc = copy.deepcopy(raw("mai2023"))
    doc["timeline"][3]["date"] = "2023-04-03"  # paper_decision gets its day
    rows = {r["name"]: r for r in timeline_rows(Challenge.model_validate(doc))}
    assert rows["paper_decision"]["utc"] == "2023-04-04T00:00:00Z"
    assert rows["paper_decision"]["fixed"] is True
    assert rows["camera_ready"]["utc"] is None


# ----------------------------------------------------------------- mai_ops.challenge.dates

LA = "America/Los_Angeles"
ZURICH = "Europe/Zurich"


@pytest.mark.parametrize(
    ("date", "time", "tz", "expected"),
    [
        pytest.param(EventDate(2021, 1, 15), dt.time(17), LA, "2021-01-16T01:00:00Z", id="la-pst"),
        pytest.param(
            EventDate(2021, 3, 13), dt.time(17), LA, "2021-03-14T01:00:00Z", id="la-last-pst-day"
        ),
        pytest.param(
            EventDate(2021, 3, 14), dt.time(17), LA, "2021-03-15T00:00:00Z", id="la-dst-starts"
        ),
        pytest.param(EventDate(2021, 3, 20), dt.time(17), LA, "2021-03-21T00:00:00Z", id="la-pdt"),
        pytest.param(
            EventDate(2021, 11, 7), dt.time(17), LA, "2021-11-08T01:00:00Z", id="la-dst-ends"
        ),
        # Europe changes clocks two weeks after the US (28 March 2021).
        pytest.param(
            EventDate(2021, 3, 20),
            dt.time(17),
            ZURICH,
            "2021-03-20T16:00:00Z",
            id="zurich-cet-while-la-is-on-pdt",
        ),
        pytest.param(
            EventDate(2021, 3, 27),
            dt.time(17),
            ZURICH,
            "2021-03-27T16:00:00Z",
            id="zurich-last-cet-day",
        ),
        pytest.param(
            EventDate(2021, 3, 28), dt.time(17), ZURICH, "2021-03-28T15:00:00Z", id="zurich-cest"
        ),
        pytest.param(
            EventDate(2021, 3, 20), dt.time(23, 59), "UTC", "2021-03-20T23:59:00Z", id="utc"
        ),
    ],
)
def test_local_instant_to_utc(date: EventDate, time: dt.time, tz: str, expected: str) -> None:
    instant = local_instant(date, time, tz)
    assert instant is not None
    assert instant.tzinfo is not None
    assert (instant.date(), instant.time()) == (date.as_date(), time)
    assert utc_iso(instant) == expected


def test_same_wall_clock_deadline_is_different_utc_in_la_and_zurich() -> None:
    # 20 March 2021, 17:00: Zurich is 8 hours ahead of LA in the US-only DST gap, not 9.
    la = local_instant(EventDate(2021, 3, 20), dt.time(17), LA)
    zurich = local_instant(EventDate(2021, 3, 20), dt.time(17), ZURICH)
    assert la - zurich == dt.timedelta(hours=8)
    la = local_instant(EventDate(2021, 1, 15), dt.time(17), LA)
    zurich = local_instant(EventDate(2021, 1, 15), dt.time(17), ZURICH)
    assert la - zurich == dt.timedelta(hours=9)


def test_zurich_challenge_deadlines() -> None:
    doc = raw("mai2021")
    doc["timezone"] = ZURICH
    rows = {r["name"]: r for r in timeline_rows(Challenge.model_validate(doc))}
    assert rows["train_data_release"]["utc"] == "2021-01-15T16:00:00Z"
    assert rows["final_deadline"]["utc"] == "2021-03-20T16:00:00Z"
    assert rows["final_deadline"]["local"] == "2021-03-20T17:00:00+01:00"
    assert rows["challenge_paper_deadline"]["utc"] == "2021-04-02T15:00:00Z"
    assert rows["challenge_paper_deadline"]["local"] == "2021-04-02T17:00:00+02:00"


def test_local_instant_of_an_unfixed_date_is_none() -> None:
    assert local_instant(EventDate(2021, 6, day_placeholder=True), dt.time(17), LA) is None
    assert local_instant(EventDate(), dt.time(17), LA) is None
    assert utc_iso(None) is None


@pytest.mark.parametrize(
    ("value", "fixed", "text", "parts"),
    [
        pytest.param("2021-06-XX", False, "June XX 2021", (2021, 6, None), id="day-xx"),
        pytest.param("2021-06-xx", False, "June XX 2021", (2021, 6, None), id="day-xx-lower"),
        pytest.param("2023-04", False, "April 2023", (2023, 4, None), id="month-only"),
        pytest.param("TBD", False, "not fixed", (None, None, None), id="tbd"),
        pytest.param(" tba ", False, "not fixed", (None, None, None), id="tba"),
        pytest.param(None, False, "not fixed", (None, None, None), id="none"),
        pytest.param(dt.date(2021, 1, 15), True, "2021-01-15", (2021, 1, 15), id="date-object"),
        pytest.param("2021-01-15", True, "2021-01-15", (2021, 1, 15), id="iso-string"),
        pytest.param("2024-02-29", True, "2024-02-29", (2024, 2, 29), id="leap-day"),
    ],
)
def test_parse_event_date(
    value: object, fixed: bool, text: str, parts: tuple[int | None, ...]
) -> None:
    date = parse_event_date(value)
    assert date.fixed is fixed
    assert date.text() == text
    assert (date.year, date.month, date.day) == parts


def test_unfixed_date_has_no_calendar_date() -> None:
    with pytest.raises(ValueError, match="June XX 2021 is not fixed"):
        parse_event_date("2021-06-XX").as_date()
    assert parse_event_date("2021-01-15").as_date() == dt.date(2021, 1, 15)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param("2021-13-01", r"'2021-13-01' is not a calendar date", id="month-13"),
        pytest.param("2021-02-29", r"is not a calendar date", id="not-a-leap-year"),
        pytest.param("2021-13", r"'2021-13' has no month 13", id="month-only-13"),
        pytest.param("2021-00-XX", r"has no month 0", id="day-xx-month-0"),
        pytest.param("next tuesday", r"is not a date; write YYYY-MM-DD", id="words"),
        pytest.param("15.01.2021", r"is not a date", id="european-format"),
        pytest.param(20210115, r"expected a date like 2021-01-15", id="integer"),
        pytest.param(
            dt.datetime(2021, 1, 15, 17, 0),
            r"give the date alone",
            id="datetime-object",
        ),
    ],
)
def test_parse_event_date_errors(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_event_date(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("17:00", dt.time(17, 0)),
        (" 08:00 ", dt.time(8, 0)),
        ("23:59", dt.time(23, 59)),
        (1020, dt.time(17, 0)),  # YAML 1.1 reads an unquoted 17:00 as 1020 minutes
        (dt.time(9, 30), dt.time(9, 30)),
    ],
)
def test_parse_time_of_day(value: object, expected: dt.time) -> None:
    assert parse_time_of_day(value) == expected


@pytest.mark.parametrize("value", ["25:00", "24:00", "17:60", "5pm", "", 1440, -1, True, None])
def test_parse_time_of_day_errors(value: object) -> None:
    with pytest.raises(ValueError, match="expected a time of day like 17:00"):
        parse_time_of_day(value)


def test_unknown_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
    assert zone(LA).key == LA


def test_phase_dates_read_in_the_challenge_zone_then_utc() -> None:
    from mai_ops import PROJECT_ROOT
    from mai_ops.challenge.timeline import phase_dates

    challenge = load_challenge(PROJECT_ROOT / "include" / "challenges" / "mai2021.yaml")
    assert phase_dates(challenge, "final_collection") == [
        "final_deadline: 2021-03-20 17:00 PDT (2021-03-21 00:00 UTC)"
    ]
    notices = phase_dates(challenge, "workshop_notices")
    assert "workshop_day: June XX 2021, not fixed" in notices
    reminders = phase_dates(challenge, "reminders")
    assert "1 d before final_deadline: 2021-03-19 17:00 PDT (2021-03-20 00:00 UTC)" in reminders
