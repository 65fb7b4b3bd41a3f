"""Every upload gets its answer, on the loopback S3 and SMTP servers.

No file name, key or team string stops a reply; one refused address stops nobody
else's email; a participants list saved by a spreadsheet loads; an upload refused
because the list was broken is judged again once it is fixed; one team flooding the
server does not hold the others back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox, text_part
from mai_ops.infra.layout import MAX_KEY_BYTES, upload_record_key
from mai_ops.infra.storage import get_json, list_objects
from mai_ops.notify.ledger import UndeliveredNotices
from mai_ops.submissions.validation import pending_uploads

from .conftest import REHEARSAL as MAI2021
from .conftest import zip_bytes

CH = load_challenge(MAI2021)
SUBMISSIONS, RESULTS = CH.buckets.submissions, CH.buckets.results


def put(s3, key: str, body: bytes | None = None) -> None:
    s3.put_object(Bucket=SUBMISSIONS, Key=key, Body=body or zip_bytes({"readme.txt": key.encode()}))


def process_all(path, s3) -> dict[str, dict]:
    """One run of the validation server: collect, then each batch."""
    batches = tasks.collect_uploads(path, [], s3=s3)
    return {r["key"]: r for keys in batches for r in tasks.validate_uploads(path, keys)}


def answer_everything(path, s3) -> dict[str, dict]:
    """Runs until nothing is left (one run answers at most a few uploads per team)."""
    answered: dict[str, dict] = {}
    for _ in range(20):  # bounded: an upload that never gets its record fails the test
        if not (results := process_all(path, s3)):
            return answered
        answered |= results
    raise AssertionError(f"still answering after 20 runs: {sorted(answered)}")


def result_keys(s3) -> list[str]:
    return [o["Key"] for o in list_objects(s3, RESULTS)]


# --- names, keys and team strings ---------------------------------------------------------

LONG = "depth/validation/borealis/" + "x" * 1000 + ".zip"
ODD_NAMES = [
    "depth/validation/borealis/模型提交.zip",  # CJK
    "depth/validation/borealis/modèle finale.zip",  # accents and a space
    "depth/validation/borealis/a b.zip",  # these two differ only in what
    "depth/validation/borealis/a_b.zip",  # the old notice key dropped
    "depth/validation/borealis/v1..2.zip",  # '..' inside a name
    "depth/validation/borealis/tab\there\x01.zip",  # control characters: bad_key
    LONG,  # 1027 bytes: its record key could not be spelled out
]


def test_every_name_gets_exactly_one_answer(s3, airflow_connections):
    assert len(LONG.encode()) > 1000
    for key in ODD_NAMES:
        put(s3, key)
    results = answer_everything(MAI2021, s3)
    assert set(results) == set(ODD_NAMES)
    assert results[ODD_NAMES[5]]["errors"][0]["code"] == "bad_key"
    for key in set(ODD_NAMES) - {ODD_NAMES[5]}:  # judged on their merits (and the quota)
        assert results[key]["errors"][0]["code"] in {"missing_model", "over_daily_limit"}, key
    assert pending_uploads(s3, CH) == []  # every record stored, none left to loop on

    mails = read_outbox(airflow_connections.folder)
    assert len(mails) == len(ODD_NAMES)  # a b.zip and a_b.zip: one email each
    assert len({m["X-MAI-Notice"] for m in mails}) == len(ODD_NAMES)
    for mail in mails:
        assert len(mail["X-MAI-Notice"]) <= 120 and mail["X-MAI-Notice"].isascii()
        assert "\r" not in mail["Subject"] and "\n" not in mail["Subject"]
    bodies = [text_part(m) for m in mails]
    assert any("模型提交.zip" in b for b in bodies)
    assert any("tab\\there\\x01.zip" in b for b in bodies)  # shown, escaped
    assert all(len(k.encode()) <= MAX_KEY_BYTES for k in result_keys(s3))

    # The team's history finds every one of them, with its email.
    from mai_ops.submissions.history import team_history

    history = {e["key"]: e for e in team_history(s3, CH, "borealis")}
    assert set(history) == set(ODD_NAMES)
    assert all(len(e["emails"]) == 1 for e in history.values())

    # Cleared and run again: the same records, no second email.
    for key in ODD_NAMES:
        tasks.validate_upload(MAI2021, key)
    assert len(read_outbox(airflow_connections.folder)) == len(ODD_NAMES)


def test_cr_lf_in_a_key_cannot_reach_the_headers(s3, airflow_connections):
    """The local S3 server refuses CR/LF in a key (AWS accepts them): the reply is built
    from such a record and sent through the real SMTP server."""
    from mai_ops.challenge.participants import load_teams
    from mai_ops.notify.messages import upload_reply

    key = "dep\r\nBcc: x@evil.example\r\nth/validation/borealis/a\r\n.zip"
    record = {
        "key": key,
        "etag": "0123abcd",
        "track": key.split("/")[0],
        "status": "rejected",
        "uploaded_at": "2021-02-01T00:00:00+00:00",
        "errors": [{"code": "bad_key", "stage": "intake", "message": "control characters"}],
    }
    borealis = next(t for t in load_teams(CH, MAI2021) if t.team_id == "borealis")
    notice = upload_reply(CH, borealis, record)
    report = tasks.PhaseRun.open(MAI2021, s3).deliver([notice])
    assert report.sent == [notice.key]
    (mail,) = read_outbox(airflow_connections.folder)
    assert mail["Bcc"] is None and "\n" not in mail["Subject"] and len(mail["Subject"]) <= 200
    assert mail["X-MAI-Notice"] == notice.header and "~" in notice.key
    assert "a\\r\\n.zip" in text_part(mail)


def test_plain_keys_keep_the_notice_keys_already_sent():
    from mai_ops.notify.messages import upload_notice_prefix

    assert upload_notice_prefix("mai2021", "depth/validation/b/a.zip", '"e1"') == (
        "mai2021/upload/depth/validation/b/a.zip/e1"
    )
    spaced = upload_notice_prefix("mai2021", "depth/validation/b/a b.zip", "e1")
    underscored = upload_notice_prefix("mai2021", "depth/validation/b/a_b.zip", "e1")
    assert spaced != underscored and "~" in spaced and "~" not in underscored
    other_version = upload_notice_prefix("mai2021", "depth/validation/b/a b.zip", "e2")
    assert other_version != spaced


# --- one bad address never blocks the others -----------------------------------------------

HEADER = "team_id,team_name,email,tracks\n"


def challenge_with(tmp_path: Path, csv_text: str | bytes, name: str = "teams.csv") -> Path:
    """The test challenge, its participants read from ``csv_text`` (bytes kept as they are)."""
    csv_path = tmp_path / name
    if isinstance(csv_text, bytes):
        csv_path.write_bytes(csv_text)
    else:
        csv_path.write_text(csv_text, encoding="utf-8")
    raw = yaml.safe_load(Path(MAI2021).read_text())
    raw["participants"] = {"source": "file", "path": str(csv_path)}
    path = tmp_path / Path(MAI2021).name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_release(s3) -> None:
    s3.put_object(Bucket=CH.buckets.organizers, Key="data/train_data_release/a.npz", Body=b"x")


def train_release():
    from mai_ops.challenge.timeline import event_instant

    return event_instant(CH, CH.event("train_data_release"))


def test_a_refused_address_fails_only_its_own_email(s3, airflow_connections, tmp_path, caplog):
    smtp = airflow_connections
    smtp.refused.add("gone@teams.example")
    teams = (
        HEADER + "aurora,Aurora,aurora@teams.example,\n"
        "borealis,Borealis,gone@teams.example,\n"  # the server rejects this mailbox
        "cobalt,Cobalt,cöbalt@teams.example,\n"  # a non-ASCII name, no SMTPUTF8
        "dawn,Dawn,dawn@teams.example,\n"
    )
    path = challenge_with(tmp_path, teams)
    stage_release(s3)
    with caplog.at_level(logging.ERROR), pytest.raises(UndeliveredNotices) as failed:
        tasks.release_data(path, train_release())
    # Everyone else got theirs; the reasons are in the task log and the failure.
    assert sorted(m["To"] for m in read_outbox(smtp.folder)) == [
        "aurora@teams.example",
        "dawn@teams.example",
    ]
    message = str(failed.value)
    assert "release/train_data_release/borealis" in message and "550" in message
    assert "release/train_data_release/cobalt" in message and "SMTPUTF8" in message
    assert "2 email(s) refused" in message
    assert "gone@teams.example" in caplog.text and "recipient address rejected" in caplog.text

    # Cleared as is: still red, nothing sent twice.
    with pytest.raises(UndeliveredNotices):
        tasks.release_data(path, train_release())
    assert len(read_outbox(smtp.folder)) == 2

    # The organizer corrects the addresses and clears: only the missing two are sent.
    fixed = teams.replace("gone@", "borealis@").replace("cöbalt@", "cobalt@")
    path = challenge_with(tmp_path, fixed)
    report = tasks.release_data(path, train_release())
    assert sorted(report["sent"]) == [
        f"{CH.id}/release/train_data_release/borealis",
        f"{CH.id}/release/train_data_release/cobalt",
    ]
    assert len(report["already_sent"]) == 2 and report["failed"] == []
    assert len(read_outbox(smtp.folder)) == 4


def test_a_refused_reply_leaves_the_other_teams_answered(s3, airflow_connections, tmp_path):
    smtp = airflow_connections
    smtp.refused.add("gone@teams.example")
    teams = (
        HEADER + "aurora,Aurora,aurora@teams.example,learned_isp\n"
        "borealis,Borealis,gone@teams.example,depth\n"
    )
    path = challenge_with(tmp_path, teams)
    put(s3, "depth/validation/borealis/a.zip")
    put(s3, "depth/validation/borealis/b.zip")
    put(s3, "learned_isp/validation/aurora/a.zip")
    batches = tasks.collect_uploads(path, [], s3=s3)
    assert len(batches) == 2
    outcomes = {}
    for keys in batches:
        try:
            outcomes[keys[0]] = tasks.validate_uploads(path, keys)
        except UndeliveredNotices as exc:
            outcomes[keys[0]] = exc
    assert isinstance(outcomes["depth/validation/borealis/a.zip"], UndeliveredNotices)
    assert "depth/validation/borealis/b.zip" in str(outcomes["depth/validation/borealis/a.zip"])
    assert [m["To"] for m in read_outbox(smtp.folder)] == ["aurora@teams.example"]
    assert pending_uploads(s3, CH) == []  # both of borealis's uploads are judged and stored

    path = challenge_with(tmp_path, teams.replace("gone@", "borealis@"))
    tasks.validate_uploads(
        path, ["depth/validation/borealis/a.zip", "depth/validation/borealis/b.zip"]
    )
    tasks.validate_uploads(path, ["learned_isp/validation/aurora/a.zip"])  # nothing new
    assert sorted(m["To"] for m in read_outbox(smtp.folder)) == [
        "aurora@teams.example",
        "borealis@teams.example",
        "borealis@teams.example",
    ]


# --- a participants list saved by a spreadsheet ------------------------------------------


def test_a_spreadsheet_csv_loads(tmp_path):
    from mai_ops.challenge.participants import load_teams

    saved = (
        "\ufeffteam_id;team_name;email;tracks\r\n"
        'aurora;Team Aurora;aurora@teams.example;"learned_isp;quantized_sr"\r\n'
        "borealis;Borealis Lab;borealis@teams.example;depth\r\n"
        ";;;\r\n"
    ).encode()
    path = challenge_with(tmp_path, saved)
    teams = load_teams(load_challenge(path), path)
    assert [(t.team_id, t.email, t.tracks) for t in teams] == [
        ("aurora", "aurora@teams.example", ("learned_isp", "quantized_sr")),
        ("borealis", "borealis@teams.example", ("depth",)),
    ]


@pytest.mark.parametrize(
    "saved, said",
    [
        pytest.param(b"", "no team registered", id="empty"),
        pytest.param(
            b"team;email\r\nx;y@z.io\r\n", "line 1: error: missing column(s)", id="header"
        ),
        pytest.param(
            b"team_id,team_name,email\nBad Id,x,a@b.io\n",
            "line 2: error: team_id",
            id="no-valid-row",
        ),
        pytest.param(
            b"team_id,team_name,email\nt\xe9,x,a@b.io\n", "line 2: not UTF-8", id="latin-1"
        ),
    ],
)
def test_a_list_with_no_team_fails_loudly_naming_the_file_and_line(tmp_path, capsys, saved, said):
    from mai_ops.challenge.participants import ParticipantsError, load_teams
    from mai_ops.cli import main

    path = challenge_with(tmp_path, saved, "broken.csv")
    with pytest.raises(ParticipantsError, match="broken.csv"):
        load_teams(load_challenge(path), path)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "broken.csv" in err and said in err


# --- an unknown_team refusal of our making is judged again ----------------------------------


def test_an_upload_refused_by_a_broken_list_is_judged_again_once_it_is_fixed(
    s3, airflow_connections, tmp_path
):
    # borealis's row is broken (a typo in its address): the row is skipped.
    broken = HEADER + "aurora,Aurora,aurora@teams.example,\nborealis,Borealis,borealis-at-x,depth\n"
    path = challenge_with(tmp_path, broken)
    key = "depth/validation/borealis/a.zip"
    put(s3, key)
    put(s3, "depth/validation/mallory/a.zip")  # truly nobody's
    first = process_all(path, s3)
    assert first[key]["errors"][0]["code"] == "unknown_team"
    assert read_outbox(airflow_connections.folder) == []  # nobody to answer
    assert pending_uploads(s3, CH, load_teams_of(path)) == []  # same list: nothing to redo

    fixed = challenge_with(tmp_path, broken.replace("borealis-at-x", "borealis@teams.example"))
    assert [u["key"] for u in pending_uploads(s3, CH, load_teams_of(fixed))] == [key]
    again = process_all(fixed, s3)
    assert list(again) == [key] and again[key]["errors"][0]["code"] == "missing_model"
    (mail,) = read_outbox(airflow_connections.folder)
    assert mail["To"] == "borealis@teams.example"
    # Judged for good now: no second run, no second email, the record replaced.
    assert process_all(fixed, s3) == {}
    assert tasks.validate_upload(fixed, key)["errors"][0]["code"] == "missing_model"
    assert len(read_outbox(airflow_connections.folder)) == 1
    etag = s3.head_object(Bucket=SUBMISSIONS, Key=key)["ETag"]
    assert get_json(s3, RESULTS, upload_record_key(key, etag))["status"] == "failed"


def load_teams_of(path):
    from mai_ops.challenge.participants import load_teams

    return load_teams(load_challenge(path), path)


# --- fairness: one team's flood does not hold the others back --------------------------------


def test_a_flood_gets_its_share_of_a_run_not_the_run(s3, airflow_connections, monkeypatch):
    import mai_ops.submissions.validation as validation

    monkeypatch.setattr(validation, "MAX_PER_RUN", 8)
    for i in range(12):  # the flood comes first
        put(s3, f"depth/validation/borealis/flood-{i:02d}.zip")
    put(s3, "learned_isp/validation/aurora/a.zip")
    put(s3, "learned_isp/validation/aurora/b.zip")
    put(s3, "learned_isp/validation/cobalt/a.zip")
    batches = tasks.collect_uploads(MAI2021, [], s3=s3)
    assert batches == [
        [f"depth/validation/borealis/flood-{i:02d}.zip" for i in range(validation.MAX_PER_OWNER)],
        ["learned_isp/validation/aurora/a.zip", "learned_isp/validation/aurora/b.zip"],
        ["learned_isp/validation/cobalt/a.zip"],
    ]
    for keys in batches:
        tasks.validate_uploads(MAI2021, keys)
    # The next run: the flood's next share, oldest first.
    assert tasks.collect_uploads(MAI2021, [], s3=s3) == [
        [f"depth/validation/borealis/flood-{i:02d}.zip" for i in range(5, 10)]
    ]


def test_a_flood_of_junk_is_refused_at_intake_past_the_daily_limit(s3, airflow_connections):
    limit = CH.track("depth").limits.per_day
    for i in range(limit + 2):
        put(s3, f"depth/validation/borealis/junk-{i}.zip")  # no model: fails its checks
    codes = []
    for _ in range(3):
        for r in process_all(MAI2021, s3).values():
            codes.append(r["errors"][0]["code"])
    assert codes == ["missing_model"] * limit + ["over_daily_limit"] * 2
