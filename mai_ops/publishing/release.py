"""Data release: publish the organizers' files for an event to participants.

Files under ``data/<event>/`` in the organizers' bucket are copied to
``releases/<event>/`` in the public bucket with a sha256 manifest and a
``SHA256SUMS`` file; every registered team gets time-limited download links
(:func:`download_links`, mailed by :func:`mai_ops.notify.messages.release_notices`).
"""

from __future__ import annotations

from typing import Any

from mai_ops.challenge.config import Challenge, Event
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import (
    data_prefix,
    release_manifest_key,
    release_prefix,
    release_sums_key,
)
from mai_ops.infra.storage import copy_if_changed, list_objects, put_json

DEFAULT_LINK_TTL_S = 7 * 24 * 3600


class ReleaseError(NeedsOrganizer):
    """The release cannot happen as configured (e.g. nothing staged to publish)."""


def publish_release(s3: Any, challenge: Challenge, event: Event) -> dict:
    """Copy the staged files to the public bucket; return the manifest (also stored)."""
    buckets = challenge.buckets
    src = data_prefix(event.name)
    staged = sorted(
        (obj for obj in list_objects(s3, buckets.organizers, src) if not obj["Key"].endswith("/")),
        key=lambda o: o["Key"],
    )
    if not staged:
        raise ReleaseError(
            f"nothing to release for {event.name}: no files under s3://{buckets.organizers}/{src}; "
            "upload the data there and clear this task"
        )
    dst = release_prefix(event.name)
    files = []
    for obj in staged:
        relative = obj["Key"][len(src) :]
        digest = copy_if_changed(s3, buckets.organizers, obj["Key"], buckets.public, dst + relative)
        files.append({"key": dst + relative, "size": obj["Size"], "sha256": digest})
    manifest = {
        "challenge": challenge.id,
        "event": event.name,
        "title": event.title,
        "files": files,
    }
    put_json(s3, buckets.public, release_manifest_key(event.name), manifest)
    sums = "".join(f"{f['sha256']}  {f['key'][len(dst) :]}\n" for f in files)
    s3.put_object(Bucket=buckets.public, Key=release_sums_key(event.name), Body=sums.encode())
    return manifest


def download_links(
    s3: Any, challenge: Challenge, manifest: dict, link_ttl_s: int = DEFAULT_LINK_TTL_S
) -> list[dict]:
    """Each released file with a presigned link valid for ``link_ttl_s`` seconds."""
    return [
        {
            "name": f["key"].rsplit("/", 1)[-1],
            "size": f["size"],
            "sha256": f["sha256"],
            "url": s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": challenge.buckets.public, "Key": f["key"]},
                ExpiresIn=link_ttl_s,
            ),
        }
        for f in manifest["files"]
    ]
