"""The parts of ``make up`` that need no Airflow: S3 state across restarts, a missing
bucket, the rehearsal copy, the challenge folders, and the generated airflow.cfg."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from mai_ops.challenge.config import challenge_files, load_challenge
from mai_ops.dev.demo import rehearsal_copy
from mai_ops.dev.embedded import ensure_buckets
from mai_ops.dev.stack import write_airflow_cfg
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.storage import list_objects, missing_bucket_fails_fast

from .conftest import CHALLENGES, MAI2021

# Each run is a process of its own, as each start of the stack is: moto's state lives
# in the process, so a restart within one process would prove nothing.
_FIRST_RUN = """
import json, sys
from pathlib import Path
from mai_ops.dev.embedded import LocalS3, ensure_buckets, ensure_upload_notifications
from mai_ops.infra.storage import put_json
server = LocalS3(state_file=Path(sys.argv[1])).start()
s3 = server.client()
ensure_buckets(s3, ["keep-submissions", "keep-results"])
ensure_upload_notifications(server.endpoint_url, "keep-submissions", "keep-uploads")
s3.put_object(Bucket="keep-submissions", Key="t/validation/a/v1.zip", Body=b"x" * 4096)
put_json(s3, "keep-results", "notifications/sent/k.json", {"to": "a@teams.example"})
head = s3.head_object(Bucket="keep-submissions", Key="t/validation/a/v1.zip")
server.stop()
print(json.dumps({"modified": head["LastModified"].isoformat(), "etag": head["ETag"]}))
"""
_SECOND_RUN = """
import json, sys
from pathlib import Path
from mai_ops.dev.embedded import LocalS3, sqs_client
from mai_ops.infra.storage import get_json
server = LocalS3(state_file=Path(sys.argv[1])).start()
s3, sqs = server.client(), sqs_client(server.endpoint_url)
head = s3.head_object(Bucket="keep-submissions", Key="t/validation/a/v1.zip")
url = sqs.get_queue_url(QueueName="keep-uploads")["QueueUrl"]
s3.put_object(Bucket="keep-submissions", Key="t/validation/a/v2.zip", Body=b"y")
messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
print(json.dumps({
    "modified": head["LastModified"].isoformat(),
    "etag": head["ETag"],
    "marker": get_json(s3, "keep-results", "notifications/sent/k.json"),
    "notified": any("v2.zip" in m["Body"] for m in messages),
}))
server.stop()
"""


def _run(code: str, state) -> dict:
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, str(state)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_restarted_s3_server_keeps_objects_timestamps_notifications_and_queues(tmp_path):
    state = tmp_path / "s3-state.pickle"
    first = _run(_FIRST_RUN, state)
    assert state.exists()
    second = _run(_SECOND_RUN, state)
    # The upload keeps its time: lateness is judged on it.
    assert (second["modified"], second["etag"]) == (first["modified"], first["etag"])
    assert second["marker"] == {"to": "a@teams.example"}  # a sent email stays sent
    assert second["notified"], "the restored bucket no longer notifies its queue"


def test_a_missing_bucket_needs_an_organizer_at_once(s3_server):
    s3 = missing_bucket_fails_fast(s3_server.client())
    with pytest.raises(NeedsOrganizer, match="no-such-bucket-here does not exist"):
        list(list_objects(s3, "no-such-bucket-here"))
    with pytest.raises(NeedsOrganizer, match="no-such-bucket-here"):
        s3.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"")
    # Other errors stay what they were.
    ensure_buckets(s3, ["present-bucket"])
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="present-bucket", Key="absent")


def test_a_rehearsal_copy_is_a_challenge_of_its_own_open_now(tmp_path):
    today = dt.date(2030, 6, 1)
    copy = rehearsal_copy(MAI2021, tmp_path, today=today, suffix="rehearsal")
    assert copy.name == "mai2021_rehearsal.yaml"
    real, rehearsal = load_challenge(MAI2021), load_challenge(copy)
    assert rehearsal.id == "mai2021_rehearsal"
    assert rehearsal.buckets.submissions == "mai2021-submissions-rehearsal"
    assert rehearsal.uploads_queue == "mai2021-uploads-rehearsal"
    assert rehearsal.event("final_deadline").date.as_date() == today + dt.timedelta(days=1)
    assert real.event("final_deadline").date.as_date() == dt.date(2021, 3, 20)
    # A date written as quoted text moves too.
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text(MAI2021.read_text().replace("date: 2021-03-20\n", "date: '2021-03-20'\n"))
    assert "'2021-03-20'" in quoted.read_text()
    moved = load_challenge(rehearsal_copy(quoted, tmp_path / "q", today=today, suffix="rehearsal"))
    assert moved.event("final_deadline").date.as_date() == today + dt.timedelta(days=1)
    # No dated final deadline, no rehearsal.
    with pytest.raises(ValueError, match="final_deadline"):
        rehearsal_copy(CHALLENGES / "mai2023.yaml", tmp_path, today=today, suffix="rehearsal")


def test_a_rehearsal_copy_is_served_only_once_its_buckets_exist(tmp_path, s3_server, monkeypatch):
    """The DAGs read the rehearsal folder: a copy there before its buckets would let a
    phase it runs late at once fail on a missing bucket. Storage failing in between
    leaves no copy, and the next sync serves the file again."""
    import yaml

    from mai_ops.dev import embedded
    from mai_ops.dev.stack import ChallengeWatcher

    sources, rehearsals = tmp_path / "challenges", tmp_path / "rehearsal"
    sources.mkdir()
    (sources / "teams.csv").write_text("team_id,team_name,email\nt,T,t@teams.example\n")
    (sources / "served.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "served",
                "title": "Served in order",
                "participants": {"source": "file", "path": "teams.csv"},
                "buckets": {
                    r: f"served-{r}" for r in ("organizers", "submissions", "public", "results")
                },
                "timeline": [
                    {"name": "final_deadline", "title": "Final", "date": dt.date(2031, 3, 20)}
                ],
            }
        )
    )
    copy = rehearsals / "served_rehearsal.yaml"
    made, refuse = [], ["served-submissions-rehearsal"]
    real = embedded.ensure_challenge_buckets

    def ensure(s3, buckets):
        made.append((buckets.submissions, copy.exists()))
        if buckets.submissions in refuse:
            refuse.remove(buckets.submissions)
            raise ConnectionError("storage down")
        return real(s3, buckets)

    monkeypatch.setattr(embedded, "ensure_challenge_buckets", ensure)
    watcher = ChallengeWatcher(s3_server.endpoint_url, dict(os.environ), [sources], rehearsals)
    with pytest.raises(ConnectionError):
        watcher.sync()
    assert not copy.exists()
    done = watcher.sync()
    assert copy.exists(), done
    assert made == [
        ("served-submissions", False),
        ("served-submissions-rehearsal", False),
        ("served-submissions", False),
        ("served-submissions-rehearsal", False),
    ]
    names = {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}
    assert {"served-results", "served-results-rehearsal"} <= names
    assert watcher.sync() == []  # nothing changed, nothing served again
    assert load_challenge(copy).id == "served_rehearsal"


def test_a_rehearsal_copy_may_put_the_deadline_at_an_exact_minute(tmp_path):
    """The demo's copy: the deadline passes during the run; its own teams; test inputs out."""
    from mai_ops.challenge.timeline import event_instant

    deadline = dt.datetime(2030, 6, 1, 9, 41, tzinfo=dt.UTC)  # 02:41 PDT
    teams = tmp_path / "teams.csv"
    teams.write_text("team_id,team_name,email,tracks\nada,Ada,ada@teams.example,depth\n")
    events = {"test_data_release": {"test_inputs": True}}
    copy = load_challenge(
        rehearsal_copy(MAI2021, tmp_path, deadline=deadline, participants=teams, events=events)
    )
    assert event_instant(copy, copy.event("final_deadline")) == deadline
    real = load_challenge(MAI2021)
    for name in ("train_data_release", "test_data_release", "preliminary_results"):
        moved, before = copy.event(name), real.event(name)
        assert moved.date.as_date() - before.date.as_date() == dt.date(2030, 6, 1) - dt.date(
            2021, 3, 20
        )
        assert moved.time == before.time  # still 5 pm
    assert copy.event("test_data_release").test_inputs
    assert Path(copy.participants.path) == teams.resolve()
    with pytest.raises(ValueError, match="whole minute"):
        rehearsal_copy(MAI2021, tmp_path, deadline=deadline.replace(second=5))
    with pytest.raises(ValueError, match="no event 'nope'"):
        rehearsal_copy(MAI2021, tmp_path, events={"nope": {"test_inputs": True}})


def test_the_challenge_folders_may_be_several(tmp_path, monkeypatch):
    copy = rehearsal_copy(MAI2021, tmp_path / "rehearsal", suffix="rehearsal")
    monkeypatch.setenv("MAI_OPS_CHALLENGES_DIR", f"{CHALLENGES}:{copy.parent}")
    names = [p.name for p in challenge_files()]
    assert names == ["mai2021.yaml", "mai2023.yaml", "mai2021_rehearsal.yaml"]


def test_airflow_cfg_says_what_the_environment_says(tmp_path):
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(
        "[core]\n# a comment Airflow wrote\nexecutor = SequentialExecutor\n"
        "simple_auth_manager_all_admins = False\n\n[api_auth]\njwt_secret = keep-me\n"
    )
    write_airflow_cfg(
        cfg,
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": "America/Los_Angeles",
            "AIRFLOW__API__PORT": "8080",
            "AIRFLOW_CONN_AWS_DEFAULT": "{}",
        },
    )
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg)
    assert parser["core"]["executor"] == "LocalExecutor"
    assert parser["core"]["simple_auth_manager_all_admins"] == "True"
    assert parser["core"]["default_timezone"] == "America/Los_Angeles"
    assert parser["api"]["port"] == "8080"
    assert parser["api_auth"]["jwt_secret"] == "keep-me"
    assert "# a comment Airflow wrote" in cfg.read_text()
    assert "conn" not in cfg.read_text().lower()


def test_a_key_with_control_characters_never_breaks_a_version_listing(s3):
    """One participant's odd key must not stop the freeze's listing for every team."""
    from mai_ops.challenge.config import load_challenge
    from mai_ops.infra.storage import list_versions

    from .conftest import MAI2021

    bucket = load_challenge(MAI2021).buckets.submissions
    key = "depth/final/borealis/tab\there\x01.zip"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert [v["Key"] for v in list_versions(s3, bucket)] == [key]


def test_an_s3_outage_refuses_requests_and_comes_back_with_every_object():
    """The fault drills' lever: down right after an armed request, back with the same data."""
    import botocore.config
    import botocore.exceptions

    from mai_ops.dev.embedded import LocalS3, s3_client

    server = LocalS3().start()
    try:
        # One attempt per call, and a connection kept open across the outage.
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
        )
        s3.create_bucket(Bucket="drill")
        s3.put_object(Bucket="drill", Key="a", Body=b"a")
        server.arm_outage("PUT /drill/frozen/", seconds=None)
        s3.put_object(Bucket="drill", Key="b", Body=b"b")  # not armed for this one
        s3.put_object(Bucket="drill", Key="frozen/1", Body=b"1")  # answered, then down
        assert server.down
        errors = (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
        )
        with pytest.raises(errors):
            s3.put_object(Bucket="drill", Key="frozen/2", Body=b"2")
        with pytest.raises(errors):
            s3_client(server.endpoint_url).get_object(Bucket="drill", Key="a")
        server.back()
        listed = sorted(o["Key"] for o in list_objects(s3, "drill"))
        assert listed == ["a", "b", "frozen/1"]
        assert s3.get_object(Bucket="drill", Key="frozen/1")["Body"].read() == b"1"
    finally:
        server.stop()


def test_an_smtp_outage_refuses_mail_and_keeps_the_outbox(tmp_path):
    import smtplib

    from mai_ops.dev.embedded import LocalSMTP, read_outbox

    server = LocalSMTP(tmp_path / "outbox").start()
    message = "From: a@example.org\r\nTo: b@example.org\r\nSubject: {}\r\n\r\nbody\r\n"
    try:
        with smtplib.SMTP(server.host, server.port) as relay:
            relay.sendmail("a@example.org", ["b@example.org"], message.format("one"))
        server.outage(seconds=None)
        with pytest.raises(OSError):
            smtplib.SMTP(server.host, server.port, timeout=5)
        server.back()
        with smtplib.SMTP(server.host, server.port) as relay:
            relay.sendmail("a@example.org", ["b@example.org"], message.format("two"))
        assert [m["Subject"] for m in read_outbox(server.folder)] == ["one", "two"]
    finally:
        server.stop()
