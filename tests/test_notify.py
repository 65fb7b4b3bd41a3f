"""Emails as teams get them, and a send ledger that loses nothing, on the loopback servers.

Every message is one multipart/alternative email with a plain-text and an HTML part, a
Message-ID derived from its notice key, Reply-To the organizers and a short subject;
what a team controls (its name, its file names) stays inert in both parts and never
reaches a header. The ledger writes an intent before each send and the sent-marker
after it: a storage outage stops the delivery instead of sending again on every retry,
and a crash between a send and its marker costs at most one copy of that one email,
with the same Message-ID.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import yaml

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.challenge.timeline import event_instant
from mai_ops.dev.embedded import FROM_EMAIL, html_part, read_outbox, text_part
from mai_ops.infra.layout import NOTICE_INTENTS, notice_intent_key, notice_marker_key
from mai_ops.infra.storage import get_json, list_objects, object_exists
from mai_ops.notify.ledger import Notice, SendNotRecorded
from mai_ops.notify.messages import event_notices, upload_reply
from mai_ops.notify.render import KINDS, TEMPLATES
from mai_ops_airflow.hooks import smtp_sender

from .conftest import REHEARSAL as MAI2021

CH = load_challenge(MAI2021)
RESULTS = CH.buckets.results
DOMAIN = FROM_EMAIL.rpartition("@")[2].rstrip(">")


def message_id(key: str) -> str:
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{DOMAIN}>"


def announcements(run: tasks.PhaseRun) -> list[Notice]:
    """One notice per team: the validation server is online (three teams in mai2021)."""
    event = CH.event("validation_server_online")
    return event_notices(run.challenge, [event], run.teams, "validation_server")


def challenge_with(tmp_path: Path, rows: list[list[str]]) -> Path:
    """The test challenge with its participants list written from ``rows`` as CSV."""
    csv_path = tmp_path / "teams.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["team_id", "team_name", "email", "tracks"], *rows])
    raw = yaml.safe_load(Path(MAI2021).read_text())
    raw["participants"] = {"source": "file", "path": str(csv_path)}
    path = tmp_path / Path(MAI2021).name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- what a team receives ---------------------------------------------------------------------


def test_every_email_has_both_parts_its_message_id_reply_to_and_a_short_subject(
    s3, airflow_connections
):
    s3.put_object(Bucket=CH.buckets.organizers, Key="data/train_data_release/a.npz", Body=b"x")
    release = event_instant(CH, CH.event("train_data_release"))
    report = tasks.release_data(MAI2021, release)
    mails = read_outbox(airflow_connections.folder)
    assert len(mails) == len(report["sent"]) == 3
    for mail in mails:
        key = mail["X-MAI-Notice"]
        assert mail.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in mail.iter_parts()]
        assert parts == ["text/plain", "text/html"]  # clients show the last they can
        assert mail["Message-ID"] == message_id(key)
        assert [a.addr_spec for a in mail["Reply-To"].addresses] == CH.organizers
        assert mail["Subject"] == "[MAI2021] Train / validation data released"
        assert mail["Date"] is not None and mail["Auto-Submitted"] == "auto-generated"
        text, html = text_part(mail), html_part(mail)
        assert "a.npz" in text and "sha256 " + hashlib.sha256(b"x").hexdigest() in text
        assert "expire 7 days after this email was sent" in text
        assert "a.npz</a>" in html and "&amp;" in html  # the link's query, escaped in HTML
        assert "&amp;" not in text and "<a " not in text  # the text part is never HTML
        assert "Reply to this email" in text
        # The stored marker names the Message-ID that went out.
        marker = get_json(s3, RESULTS, notice_marker_key(key))
        assert marker["message_id"] == mail["Message-ID"] and marker["attempts"] == 1


def test_a_hostile_team_name_and_file_name_stay_inert(s3, airflow_connections, tmp_path):
    evil_name = '<script>alert("x")</script>\r\nBcc: victim@evil.example'
    path = challenge_with(tmp_path, [["borealis", evil_name, "borealis@teams.example", "depth"]])
    run = tasks.PhaseRun.open(path, s3)
    (team,) = run.teams
    key = 'depth/validation/borealis/<img src=x onerror="alert(1)">\x1b[31m.zip'
    record = {
        "key": key,
        "etag": "0123abcd",
        "track": "depth",
        "status": "rejected",
        "uploaded_at": "2021-02-01T00:00:00+00:00",
        "errors": [{"code": "not_zip_name", "stage": "intake", "message": "<b>no</b> zip"}],
    }
    notices = [*announcements(run), upload_reply(run.challenge, team, record)]
    assert run.deliver(notices).sent == [n.key for n in notices]
    for mail in read_outbox(airflow_connections.folder):
        assert mail["Bcc"] is None and "victim" not in str(mail["To"])
        assert all("\n" not in v and "\r" not in v for _, v in mail.items())
        text, html = text_part(mail), html_part(mail)
        # Plain text: the name as written, on one line; never HTML-escaped.
        assert '<script>alert("x")</script> Bcc: victim@evil.example' in text
        assert "\nBcc:" not in text and "&lt;" not in text
        # HTML: escaped, no element of the team's making.
        assert "<script" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        if "upload" in mail["X-MAI-Notice"]:
            assert "<img" not in html and "<b>" not in html
            assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
            assert '<img src=x onerror="alert(1)">\\x1b[31m.zip' in text  # escaped, shown
            assert "\x1b" not in text and "\x1b" not in html and "\x1b" not in mail["Subject"]
            assert "What to do: Pack the model" in text


def test_each_kind_has_its_template_pair():
    for kind in KINDS:
        assert (TEMPLATES / f"{kind}.txt").is_file() and (TEMPLATES / f"{kind}.html").is_file()


# --- the ledger: intent, send, sent-marker ------------------------------------------------


def test_a_storage_outage_sends_nothing_however_often_the_task_retries(
    s3_server, s3, airflow_connections
):
    run = tasks.PhaseRun.open(MAI2021, s3)
    notices = announcements(run)
    s3_server.stop()
    try:
        for _ in range(3):  # the task's tries
            with pytest.raises(Exception, match="Could not connect"):
                tasks.PhaseRun.open(MAI2021, s3).deliver(notices)
        assert read_outbox(airflow_connections.folder) == []  # nothing sent without a record
    finally:
        s3_server.start()
    report = tasks.PhaseRun.open(MAI2021, s3).deliver(notices)
    assert report.sent == [n.key for n in notices] and report.resent == []
    assert len(read_outbox(airflow_connections.folder)) == len(notices)


def test_storage_lost_between_a_send_and_its_record_costs_one_copy_of_one_email(
    s3_server, s3, airflow_connections
):
    """The storage goes away right after the relay took the second email."""
    run = tasks.PhaseRun.open(MAI2021, s3)
    notices = announcements(run)
    assert len(notices) == 3
    real = smtp_sender()
    sent: list[str] = []

    def send_then_lose_the_storage(notice: Notice) -> str | None:
        message = real(notice)
        sent.append(notice.key)
        if len(sent) == 2:
            s3_server.stop()
        return message

    try:
        # Try 1: the first email is sent and recorded; the second is sent, its marker
        # cannot be written, and the delivery stops there: the third is not sent.
        with pytest.raises(SendNotRecorded, match="same Message-ID"):
            tasks.PhaseRun.open(MAI2021, s3, send_then_lose_the_storage).deliver(notices)
        assert sent == [notices[0].key, notices[1].key]
        # Try 2: the storage is still down: nothing is sent.
        with pytest.raises(Exception, match="Could not connect"):
            tasks.PhaseRun.open(MAI2021, s3, real).deliver(notices)
    finally:
        s3_server.start()
    # Try 3: the second one may have gone out: sent again, with the same Message-ID.
    report = tasks.PhaseRun.open(MAI2021, s3, real).deliver(notices)
    assert report.already_sent == [notices[0].key]
    assert report.sent == [notices[1].key, notices[2].key]
    assert report.resent == [notices[1].key]

    mails = read_outbox(airflow_connections.folder)
    assert len(mails) <= len(notices) + 1  # at most one copy more than the notices
    by_key = {n.key: [m for m in mails if m["X-MAI-Notice"] == n.key] for n in notices}
    assert [len(by_key[n.key]) for n in notices] == [1, 2, 1]
    assert {m["Message-ID"] for m in by_key[notices[1].key]} == {message_id(notices[1].key)}
    for n in notices:
        assert object_exists(s3, RESULTS, notice_marker_key(n.key))
    marker = get_json(s3, RESULTS, notice_marker_key(notices[1].key))
    assert marker["attempts"] == 2
    # A fourth try sends nothing.
    again = tasks.PhaseRun.open(MAI2021, s3, real).deliver(notices)
    assert again.sent == [] and len(again.already_sent) == 3
    assert len(read_outbox(airflow_connections.folder)) == len(mails)


def test_an_email_the_relay_never_took_is_not_counted_as_maybe_sent(
    s3, airflow_connections, tmp_path
):
    smtp = airflow_connections
    run = tasks.PhaseRun.open(MAI2021, s3)
    notices = announcements(run)
    smtp.stop()  # the relay is down: the first send fails before anything is taken
    with pytest.raises(OSError):
        tasks.PhaseRun.open(MAI2021, s3).deliver(notices)
    assert list(list_objects(s3, RESULTS, NOTICE_INTENTS)) == []  # nothing maybe-sent
    smtp.start()
    smtp.refused.add(notices[0].to)  # and one mailbox the relay refuses
    report = tasks.PhaseRun.open(MAI2021, s3).deliver(notices, settle=False)
    assert report.resent == [] and report.sent == [n.key for n in notices[1:]]
    assert len(report.failed) == 1 and report.failed[0].startswith(notices[0].key)
    assert not object_exists(s3, RESULTS, notice_intent_key(notices[0].key))
    assert not object_exists(s3, RESULTS, notice_marker_key(notices[0].key))


# --- what each kind says ------------------------------------------------------------------


def test_release_links_only_the_teams_tracks_and_the_common_files():
    from mai_ops.challenge.participants import Team
    from mai_ops.notify.messages import release_notices

    links = [
        {"name": n, "size": 2_500_000, "sha256": "ab" * 32, "url": f"https://s3.example/{n}?X=1"}
        for n in ("depth/train.npz", "learned_isp.npz", "test/depth/input/0001.png", "README.txt")
    ]
    borealis = Team("borealis", "Borealis Lab", "borealis@teams.example", ("depth",))
    anyone = Team("free", "Free", "free@teams.example", ())  # no tracks listed: every track
    mine, every = release_notices(
        CH, CH.event("train_data_release"), links, [borealis, anyone], 7 * 86400
    )
    assert "depth/train.npz" in mine.text and "test/depth/input/0001.png" in mine.text
    assert "README.txt" in mine.text and "learned_isp.npz" not in mine.text
    assert "2.5 MB" in mine.text and "sha256 " + "ab" * 32 in mine.text
    assert all(link["name"] in every.text for link in links)
    assert 'href="https://s3.example/README.txt?X=1"' in mine.html


def test_results_say_rank_of_n_runtime_device_flags_error_meaning_and_the_leaderboard():
    from mai_ops.challenge.participants import Team
    from mai_ops.notify.messages import preliminary_results_notices

    aurora = Team("aurora", "Team Aurora", "aurora@teams.example", ("learned_isp", "quantized_sr"))
    row = {"team": "aurora", "rank": 2, "status": "ok", "score": 12.5, "psnr": 30.25}
    table = {
        "tracks": {
            "learned_isp": {
                "metrics": ["psnr", "ssim"],
                "device": "dimensity1000",
                "rows": [
                    {"team": "x", "rank": 1, "status": "ok"},
                    row
                    | {
                        "ssim": 0.9,
                        "runtime_ms": 45.6,
                        "device": "dimensity1000",
                        "backend": "litert",
                        "flags": ["results_not_reproduced"],
                    },
                    {"team": "y", "rank": None, "status": "failed", "error": "not_tflite"},
                ],
            },
            "quantized_sr": {
                "metrics": ["psnr"],
                "device": "vs680",
                "rows": [{"team": "aurora", "rank": None, "status": "failed", "error": "flex_op"}],
            },
        }
    }
    (plain,) = preliminary_results_notices(CH, table, [aurora])
    assert "rank 2 of 2, score 12.5" in plain.text
    assert "psnr: 30.25" in plain.text and "ssim: 0.9" in plain.text
    # Measured by LiteRT on our CPU: the email says so next to the number.
    assert (
        "runtime: 45.6 ms on dimensity1000 (LiteRT on the server CPU, standing in for "
        "MediaTek Dimensity 1000+" in plain.text
    )
    assert "flagged results_not_reproduced: the results in your archive" in plain.text
    assert "not ranked: the submission failed with [flex_op], Flex (SELECT_TF_OPS) ops" in (
        plain.text
    )
    assert "leaderboard" not in plain.text  # no public URL: no link
    (linked,) = preliminary_results_notices(CH, table, [aurora], "https://pub.example/mai/")
    assert "leaderboard: https://pub.example/mai/leaderboard/learned_isp/index.html" in (
        linked.text
    )
    assert 'href="https://pub.example/mai/leaderboard/quantized_sr/index.html"' in linked.html
    assert linked.subject == "[MAI2021] Preliminary test results"


def test_the_receipt_points_out_a_frozen_archive_without_a_fact_sheet(s3, airflow_connections):
    from .conftest import zip_bytes

    key = "depth/final/borealis/final.zip"
    s3.put_object(
        Bucket=CH.buckets.submissions, Key=key, Body=zip_bytes({"model.tflite": b"not a model"})
    )
    assert tasks.validate_upload(MAI2021, key)["precheck_status"] == "failed"  # unpacked
    tasks.freeze_final(MAI2021)
    tasks.send_receipts(MAI2021)
    receipts = [m for m in read_outbox(airflow_connections.folder) if "receipt" in m["Subject"]]
    (receipt,) = [m for m in receipts if m["To"] == "borealis@teams.example"]
    text = text_part(receipt)
    assert f"- depth: {key}, received by the server at " in text
    assert "NO fact sheet (.pdf) in this archive" in text and "Reply to this email" in text
    assert "NO fact sheet" in html_part(receipt)
    # Teams with nothing frozen get no word about a fact sheet.
    others = [text_part(m) for m in receipts if m is not receipt]
    assert others and not any("fact sheet" in t for t in others)
