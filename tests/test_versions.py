"""Exactly the version that arrived: the freeze and the validation server on the local S3.

Uploads are replaced under the same key after the deadline, and while the freeze or
the validation server reads them (a hook on the client replaces the object right
before the request that reads it). The freeze must copy the version received in
time, with its own sha256 and time, or say plainly that it is gone; the validation
server must judge exactly one version per record. Both with a versioned submissions
bucket (as the project creates it) and with one that keeps no versions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path
from urllib.parse import unquote

import yaml

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.challenge.dates import zone
from mai_ops.dev.embedded import ensure_buckets, read_outbox, text_part
from mai_ops.infra.layout import FROZEN_MANIFEST, upload_record_key
from mai_ops.infra.storage import bucket_versioned, get_json, list_versions, object_exists
from mai_ops.submissions.validation import pending_uploads

from .conftest import REHEARSAL, reference_model, zip_bytes

CH = load_challenge(REHEARSAL)
TEAMS = """team_id,team_name,email,tracks
aurora,Team Aurora,aurora@teams.example,learned_isp;quantized_sr
borealis,Borealis Lab,borealis@teams.example,depth
bo,Team Bo,bo@teams.example,depth
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(s3, bucket: str, key: str, body: bytes) -> dict:
    """Upload ``body`` a second after the previous upload; its HEAD (version, time).

    The storage server stamps uploads to the second: the pause keeps each upload in a
    second of its own, so "the last one" is unambiguous.
    """
    time.sleep(1.05)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return s3.head_object(Bucket=bucket, Key=key)


def next_deadline() -> dt.datetime:
    """A deadline (local, whole minute, as challenge files give it) at least 15 s away."""
    now = dt.datetime.now(zone(CH.timezone))
    deadline = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return (
        deadline
        if deadline - now > dt.timedelta(seconds=15)
        else deadline + dt.timedelta(minutes=1)
    )


def wait_past(deadline: dt.datetime) -> None:
    """Until the storage server's clock (this machine's) is past ``deadline``."""
    while dt.datetime.now(dt.UTC) <= deadline + dt.timedelta(seconds=1):
        time.sleep(0.2)


def challenge_closing_at(
    tmp_path: Path, deadline: dt.datetime, bucket_suffix: str | None = None
) -> Path:
    """The test challenge with its final deadline at ``deadline`` and the teams above.

    With ``bucket_suffix`` its buckets are others, made here without versioning.
    """
    raw = yaml.safe_load(REHEARSAL.read_text())
    event = next(e for e in raw["timeline"] if e["name"] == "final_deadline")
    event["date"], event["time"] = deadline.date().isoformat(), deadline.strftime("%H:%M")
    teams = tmp_path / "teams.csv"
    teams.write_text(TEAMS)
    raw["participants"] = {"source": "file", "path": str(teams)}
    if bucket_suffix:
        raw["buckets"] = {k: f"{v}-{bucket_suffix}" for k, v in raw["buckets"].items()}
    path = tmp_path / "challenge.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def unversioned_buckets(s3, challenge) -> None:
    """The challenge's buckets, none versioned, emptied."""
    names = list(challenge.buckets.model_dump().values())
    ensure_buckets(s3, names)
    for bucket in names:
        assert not bucket_versioned(s3, bucket)
        for entry in list(list_versions(s3, bucket)):
            s3.delete_object(Bucket=bucket, Key=entry["Key"])


def replace_before(client, operation: str, bucket: str, key: str, body: bytes, writer) -> list:
    """Make ``writer`` upload ``body`` to ``key`` right before ``client``'s first
    ``operation`` (CopyObject or GetObject) that reads that key: a participant's upload
    landing in the middle of the freeze or of a validation run. Returns the list the
    hook appends to when it fires."""
    fired: list = []

    def hook(params, **_):
        source = params.get("CopySource") if operation == "CopyObject" else params
        if isinstance(source, str):  # botocore may have serialized it already
            named = unquote(source.split("?")[0]).lstrip("/").split("/", 1)
            source = dict(zip(("Bucket", "Key"), named, strict=False))
        if fired or source.get("Bucket") != bucket or source.get("Key") != key:
            return
        writer.put_object(Bucket=bucket, Key=key, Body=body)
        fired.append(key)

    client.meta.events.register(f"before-parameter-build.s3.{operation}", hook)
    return fired


def mails(outbox) -> dict[str, str]:
    """Each recipient's email as the plain text a mail client shows."""
    return {m["To"]: text_part(m) for m in read_outbox(outbox)}


def test_the_submissions_bucket_is_created_versioned(s3):
    assert bucket_versioned(s3, CH.buckets.submissions)


def test_the_freeze_takes_the_version_received_in_time_and_each_team_reads_its_own(
    s3, s3_server, airflow_connections, tmp_path
):
    deadline = next_deadline()
    path = challenge_closing_at(tmp_path, deadline)
    bucket = CH.buckets.submissions
    depth, isp = reference_model("depth"), reference_model("learned_isp")
    in_time = zip_bytes({"model.tflite": depth, "readme.txt": b"received in time"})
    ours = zip_bytes({"model.tflite": depth, "readme.txt": b"team bo"})
    isp_zip = zip_bytes({"model.tflite": isp})
    final = "depth/final/borealis/final.zip"
    first = put(s3, bucket, final, in_time)
    put(s3, bucket, "depth/final/bo/bo.zip", ours)
    put(s3, bucket, "learned_isp/final/aurora/a.zip", isp_zip)
    # Later in time than final.zip, but none of them a final submission:
    put(s3, bucket, "depth/final/borealis/notes.txt", b"a stray file, not a zip")
    put(s3, bucket, "depth/final/borealis/extra/deeper.zip", in_time)
    put(s3, bucket, "learned_isp/final/borealis/isp.zip", isp_zip)  # not its track
    wait_past(deadline)
    replaced = zip_bytes({"model.tflite": b"uploaded after the deadline"})
    late = put(s3, bucket, final, replaced)
    assert late["VersionId"] != first["VersionId"]

    # aurora's upload is replaced while the freeze runs, after the listing.
    freezer = s3_server.client()
    during = zip_bytes({"model.tflite": b"replaced during the freeze"})
    fired = replace_before(
        freezer, "CopyObject", bucket, "learned_isp/final/aurora/a.zip", during, s3
    )
    tasks.freeze_final(path, s3=freezer)
    assert fired  # the replacement landed before the freeze copied aurora's upload

    manifest = get_json(s3, CH.buckets.results, FROZEN_MANIFEST)
    frozen = {(f["track"], f["team"]): f for f in manifest["frozen"]}
    assert set(frozen) == {("depth", "borealis"), ("depth", "bo"), ("learned_isp", "aurora")}
    expected = {("depth", "borealis"): in_time, ("depth", "bo"): ours}
    expected[("learned_isp", "aurora")] = isp_zip
    for which, body in expected.items():
        entry = frozen[which]
        copy = s3.get_object(Bucket=CH.buckets.results, Key=entry["frozen"])["Body"].read()
        assert copy == body and entry["sha256"] == sha256(body) and entry["size"] == len(body)
    borealis = frozen[("depth", "borealis")]
    assert (borealis["source"], borealis["version_id"]) == (final, first["VersionId"])
    assert borealis["etag"] == first["ETag"].strip('"')
    assert dt.datetime.fromisoformat(borealis["uploaded_at"]) == first["LastModified"]
    live = s3.get_object(Bucket=bucket, Key="learned_isp/final/aurora/a.zip")["Body"].read()
    assert live == during  # replaced in the bucket, not in the frozen set

    refused = {r["key"]: r for r in manifest["rejected"]}
    assert {k: (r["code"], r["team"]) for k, r in refused.items()} == {
        final: ("late", "borealis"),
        "depth/final/borealis/notes.txt": ("not_zip_name", "borealis"),
        "depth/final/borealis/extra/deeper.zip": ("bad_key", "borealis"),
        "learned_isp/final/borealis/isp.zip": ("not_registered", "borealis"),
    }
    assert refused[final]["version_id"] == late["VersionId"]
    assert {"track": "depth", "team": "borealis"} not in manifest["missing"]
    assert manifest["versioned"] is True

    tasks.send_receipts(path)
    sent = mails(airflow_connections.folder)
    mine = sent["borealis@teams.example"]
    assert f"{final}, received by the server at" in mine and sha256(in_time) in mine
    assert sha256(replaced) not in mine
    assert f"NOT accepted [late]: {final}: late: the server received it at" in mine
    assert "NOT accepted [not_zip_name]: depth/final/borealis/notes.txt:" in mine
    assert "NOT accepted [bad_key]: depth/final/borealis/extra/deeper.zip:" in mine
    assert "NOT accepted [not_registered]: learned_isp/final/borealis/isp.zip:" in mine
    assert "/bo/" not in mine
    # Team bo reads its own upload only: no key of borealis (whose id starts with bo).
    theirs = sent["bo@teams.example"]
    assert "depth/final/bo/bo.zip" in theirs and sha256(ours) in theirs
    assert "borealis" not in theirs and "NOT accepted" not in theirs


def test_without_versions_an_upload_replaced_after_the_deadline_is_named_never_swapped(
    s3, s3_server, airflow_connections, tmp_path
):
    deadline = next_deadline()
    path = challenge_closing_at(tmp_path, deadline, bucket_suffix="noversions")
    challenge = load_challenge(path)
    unversioned_buckets(s3, challenge)
    bucket = challenge.buckets.submissions
    older = zip_bytes({"model.tflite": b"aurora's earlier upload"})
    last = zip_bytes({"model.tflite": b"aurora's last upload in time"})
    put(s3, bucket, "learned_isp/final/aurora/a.zip", older)
    put(s3, bucket, "learned_isp/final/aurora/b.zip", last)
    put(s3, bucket, "depth/final/borealis/final.zip", zip_bytes({"readme.txt": b"in time"}))
    wait_past(deadline)
    # Replaced after the deadline, before the freeze: only the late object is left.
    put(s3, bucket, "depth/final/borealis/final.zip", zip_bytes({"readme.txt": b"late"}))
    # Replaced after the deadline while the freeze runs: listed in time, then gone.
    freezer = s3_server.client()
    fired = replace_before(
        freezer, "GetObject", bucket, "learned_isp/final/aurora/b.zip", b"too late", s3
    )
    tasks.freeze_final(path, s3=freezer)
    assert fired

    manifest = get_json(s3, challenge.buckets.results, FROZEN_MANIFEST)
    assert manifest["frozen"] == []  # neither the replacement nor aurora's older a.zip
    assert manifest["versioned"] is False
    refused = {r["key"]: r for r in manifest["rejected"]}
    gone = refused["learned_isp/final/aurora/b.zip"]
    assert (gone["code"], gone["team"]) == ("replaced_after_deadline", "aurora")
    assert "its bytes are gone" in gone["reason"] and "not taken in its place" in gone["reason"]
    replaced = refused["depth/final/borealis/final.zip"]
    assert replaced["code"] == "late" and "keeps no earlier versions" in replaced["reason"]
    assert not object_exists(s3, challenge.buckets.results, "frozen/learned_isp/aurora/b.zip")
    assert {"track": "learned_isp", "team": "aurora"} not in manifest["missing"]

    tasks.send_receipts(path)
    sent = mails(airflow_connections.folder)
    aurora = sent["aurora@teams.example"]
    assert "NOT accepted [replaced_after_deadline]: learned_isp/final/aurora/b.zip:" in aurora
    assert "aurora/a.zip" not in aurora
    assert "NOT accepted [late]: depth/final/borealis/final.zip:" in sent["borealis@teams.example"]


def test_an_upload_replaced_while_it_is_read_is_judged_as_the_version_read(
    s3, s3_server, airflow_connections
):
    key, bucket = "depth/validation/borealis/raced.zip", CH.buckets.submissions
    first, second = zip_bytes({"readme.txt": b"first"}), zip_bytes({"readme.txt": b"second"})
    head = put(s3, bucket, key, first)
    reader = s3_server.client()
    assert replace_before(reader, "GetObject", bucket, key, second, s3) == []
    record = tasks.validate_upload(REHEARSAL, key, s3=reader)
    stored = get_json(s3, CH.buckets.results, upload_record_key(key, head["ETag"]))
    assert stored["sha256"] == sha256(first)  # the version its record is named after
    assert record["status"] == "failed"
    # The replacement has no record yet: the next sweep judges it, under its own.
    (pending,) = pending_uploads(s3, CH)
    assert pending["key"] == key
    assert tasks.validate_upload(REHEARSAL, key)["status"] == "failed"
    now = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    assert get_json(s3, CH.buckets.results, upload_record_key(key, now))["sha256"] == sha256(second)
    assert pending_uploads(s3, CH) == []
    notices = sorted(m["X-MAI-Notice"] for m in read_outbox(airflow_connections.folder))
    assert len(notices) == 2 and {n.split("/")[-2] for n in notices} == {
        head["ETag"].strip('"'),
        now.strip('"'),
    }


def test_without_versions_an_upload_replaced_while_read_is_judged_as_the_new_one(
    s3, s3_server, airflow_connections, tmp_path
):
    path = challenge_closing_at(tmp_path, next_deadline() + dt.timedelta(days=1), "noversions")
    challenge = load_challenge(path)
    unversioned_buckets(s3, challenge)
    key, bucket = "depth/validation/borealis/raced.zip", challenge.buckets.submissions
    first, second = zip_bytes({"readme.txt": b"first"}), zip_bytes({"readme.txt": b"second"})
    head = put(s3, bucket, key, first)
    reader = s3_server.client()
    replace_before(reader, "GetObject", bucket, key, second, s3)
    tasks.validate_upload(path, key, s3=reader)
    now = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    assert now != head["ETag"]
    results = challenge.buckets.results
    assert get_json(s3, results, upload_record_key(key, now))["sha256"] == sha256(second)
    # The first version's bytes are gone: it gets no record, and its ETag no answer.
    assert not object_exists(s3, results, upload_record_key(key, head["ETag"]))
    assert pending_uploads(s3, challenge) == []
    assert len(read_outbox(airflow_connections.folder)) == 1


def test_the_same_bytes_uploaded_again_under_the_same_name_are_the_same_upload(
    s3, airflow_connections
):
    bucket = CH.buckets.submissions
    key = "depth/validation/borealis/same.zip"
    body = zip_bytes({"readme.txt": b"the same bytes"})
    first = put(s3, bucket, key, body)
    ((record,),) = [
        tasks.validate_uploads(REHEARSAL, keys)
        for keys in tasks.collect_uploads(REHEARSAL, [], s3=s3)
    ]
    again = put(s3, bucket, key, body)  # a new version with the same ETag
    assert again["ETag"] == first["ETag"] and again["LastModified"] > first["LastModified"]
    assert pending_uploads(s3, CH) == []  # already answered: nothing to judge
    assert tasks.validate_upload(REHEARSAL, key) == record
    assert len(read_outbox(airflow_connections.folder)) == 1

    # A final upload sent again becomes the team's last upload, from the re-upload's time.
    a = zip_bytes({"readme.txt": b"final a"})
    put(s3, bucket, "depth/final/borealis/a.zip", a)
    put(s3, bucket, "depth/final/borealis/b.zip", zip_bytes({"readme.txt": b"final b"}))
    resent = put(s3, bucket, "depth/final/borealis/a.zip", a)
    for keys in tasks.collect_uploads(REHEARSAL, [], s3=s3):
        tasks.validate_uploads(REHEARSAL, keys)
    assert len(read_outbox(airflow_connections.folder)) == 3  # a and b, once each
    tasks.freeze_final(REHEARSAL)
    (entry,) = tasks.list_frozen(REHEARSAL)
    assert entry["source"] == "depth/final/borealis/a.zip" and entry["sha256"] == sha256(a)
    assert dt.datetime.fromisoformat(entry["uploaded_at"]) == resent["LastModified"]
