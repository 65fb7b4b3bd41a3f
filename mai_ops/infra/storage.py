"""Object-storage helpers over a boto3 S3 client.

The DAGs get their client from the Amazon provider's ``S3Hook`` (connection
``aws_default``); tests and the demo build one against the local S3-compatible
server. Which key holds what is :mod:`mai_ops.infra.layout` (docs/storage.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

CHUNK = 1024 * 1024


def missing_bucket_fails_fast(s3: Any) -> Any:
    """Make ``s3`` raise NeedsOrganizer when a bucket does not exist; returns ``s3``.

    No retry creates a bucket: the name in the challenge file is wrong or the bucket
    was never made, so the task fails at once saying which one.
    """

    def raise_for_missing_bucket(parsed=None, **_):
        error = (parsed or {}).get("Error") or {}
        if error.get("Code") == "NoSuchBucket":
            from mai_ops.errors import NeedsOrganizer

            bucket = error.get("BucketName") or "named in the challenge file"
            raise NeedsOrganizer(
                f"bucket {bucket} does not exist: create it, or correct `buckets` in the "
                "challenge file"
            )

    s3.meta.events.register(
        "after-call.s3", raise_for_missing_bucket, unique_id="mai-ops-missing-bucket"
    )
    return s3


def list_objects(s3: Any, bucket: str, prefix: str = "") -> Iterator[dict]:
    """Every object under ``prefix`` (all pages), as the ListObjectsV2 entries."""
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


def sha256_of_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_object(s3: Any, bucket: str, key: str) -> str:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def put_json(s3: Any, bucket: str, key: str, data: Any) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > 1024:  # S3 refuses it; so do we, everywhere
        raise ValueError(f"object key of {len(key.encode())} bytes, over S3's 1024: {key[:80]!r}…")
    body = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def get_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def copy_if_changed(s3: Any, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> str:
    """Copy unless the destination already holds the same bytes; return the sha256.

    The digest travels as object metadata so a re-run compares without re-reading.
    """
    digest = sha256_of_object(s3, src_bucket, src_key)
    try:
        head = s3.head_object(Bucket=dst_bucket, Key=dst_key)
        if head.get("Metadata", {}).get("sha256") == digest:
            return digest
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
            raise
    s3.copy_object(
        Bucket=dst_bucket,
        Key=dst_key,
        CopySource={"Bucket": src_bucket, "Key": src_key},
        Metadata={"sha256": digest, "source": f"s3://{src_bucket}/{src_key}"},
        MetadataDirective="REPLACE",
    )
    return digest


def is_missing(exc: Exception) -> bool:
    """Whether a client error says the object (or the version asked for) does not exist."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}


def is_precondition_failed(exc: Exception) -> bool:
    """Whether a client error is a failed condition (``If-Match`` on another ETag)."""
    error = getattr(exc, "response", {}).get("Error", {})
    return error.get("Code") in {"412", "PreconditionFailed"}


def bucket_versioned(s3: Any, bucket: str) -> bool:
    """Whether the bucket keeps every version of an object (versioning ``Enabled``)."""
    return s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"


def enable_versioning(s3: Any, bucket: str) -> None:
    """Keep every version of every object in ``bucket`` from now on (idempotent)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def list_versions(s3: Any, bucket: str, prefix: str = "") -> Iterator[dict]:
    """Every version and delete marker under ``prefix``, each key's newest first.

    The ListObjectVersions entries, with ``DeleteMarker`` set on the markers. A bucket
    without versioning lists each object once, with the version id ``"null"``.
    """
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        entries = [{**v, "DeleteMarker": False} for v in page.get("Versions", [])]
        entries += [{**m, "DeleteMarker": True} for m in page.get("DeleteMarkers", [])]
        # Each key's entries newest first, as S3 orders them; within one second the
        # server's own order (IsLatest first) decides, so keep it stable.
        yield from sorted(
            entries, key=lambda e: (e["Key"], not e.get("IsLatest"), -e["LastModified"].timestamp())
        )


def public_read_policy(bucket: str) -> dict:
    """The bucket policy that lets anyone read (only read) every object of ``bucket``.

    Anonymous ``s3:GetObject`` on ``arn:aws:s3:::<bucket>/*``: a link to a leaderboard
    page opens in any browser, while listing the bucket or writing to it still needs
    the organizers' credentials. The same document on AWS S3 (with the bucket's Block
    Public Access settings allowing public policies) and MinIO (``mc anonymous set
    download`` writes an equivalent one); docs/deployment.md.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicReadObjects",
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def allow_public_read(s3: Any, bucket: str) -> None:
    """Apply :func:`public_read_policy` to ``bucket`` (idempotent; replaces its policy)."""
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_read_policy(bucket)))
