"""Data release: publish the organizers' files for an event to participants.

Files under ``data/<event>/`` in the organizers' bucket are copied to
``releases/<event>/`` in the public bucket with a sha256 manifest and a
``SHA256SUMS`` file; every registered team gets time-limited download links
(:func:`download_links`, mailed by :func:`mai_ops.notify.messages.release_notices`).

A release event with ``test_inputs: true`` (the test data release) also publishes every
track's hidden test inputs, ``test/<track>/input/<name>``, to
``releases/<event>/test/<track>/input/<name>``, after checking from the listing that
each has its ground truth (:func:`mai_ops.models.fidelity.staged_pairs`). Ground
truth is never published: nothing under ``test/<track>/gt/`` is read, and a staged
``data/<event>/`` object with a folder named ``gt`` anywhere in its key stops the
release before anything is copied (:class:`ReleaseError` naming every such key).
"""

from __future__ import annotations

from typing import Any

from mai_ops.challenge.config import Challenge, Event
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import (
    data_prefix,
    has_ground_truth_segment,
    release_manifest_key,
    release_prefix,
    release_sums_key,
    released_test_input_key,
)
from mai_ops.infra.storage import copy_if_changed, list_objects, put_json

DEFAULT_LINK_TTL_S = 7 * 24 * 3600


class ReleaseError(NeedsOrganizer):
    """The release cannot happen as configured (e.g. nothing staged to publish)."""


def publish_release(s3: Any, challenge: Challenge, event: Event) -> dict:
    """Copy the staged files to the public bucket; return the manifest (also stored).

    Everything to publish is listed and checked first, so a refused release copies
    nothing.
    """
    buckets = challenge.buckets
    src = data_prefix(event.name)
    dst = release_prefix(event.name)
    staged = sorted(
        (obj for obj in list_objects(s3, buckets.organizers, src) if not obj["Key"].endswith("/")),
        key=lambda o: o["Key"],
    )
    truths = [o["Key"] for o in staged if has_ground_truth_segment(o["Key"][len(src) :])]
    if truths:
        shown = ", ".join(f"s3://{buckets.organizers}/{k}" for k in truths[:20])
        raise ReleaseError(
            f"refusing to publish ground truth: {shown}"
            f"{f' and {len(truths) - 20} more' if len(truths) > 20 else ''} "
            f"(a folder named gt under {src}); move it out of {src} and clear this task"
        )
    copies = [(o["Key"], dst + o["Key"][len(src) :], o["Size"]) for o in staged]
    if event.test_inputs:
        copies += _test_inputs(s3, challenge, event)
    if not copies:
        raise ReleaseError(
            f"nothing to release for {event.name}: no files under s3://{buckets.organizers}/{src}; "
            "upload the data there and clear this task"
        )
    first: dict[str, str] = {}
    for key, target, _ in copies:
        if has_ground_truth_segment(key) or has_ground_truth_segment(target[len(dst) :]):
            raise ReleaseError(f"refusing to publish ground truth: s3://{buckets.organizers}/{key}")
        if target in first:
            raise ReleaseError(
                f"s3://{buckets.organizers}/{key} and s3://{buckets.organizers}/{first[target]} "
                f"would both be published as {target}; rename one"
            )
        first[target] = key
    files = []
    for key, target, size in copies:
        digest = copy_if_changed(s3, buckets.organizers, key, buckets.public, target)
        files.append({"key": target, "size": size, "sha256": digest})
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


def _test_inputs(s3: Any, challenge: Challenge, event: Event) -> list[tuple[str, str, int]]:
    """(staged key, published key, size) of every track's test inputs, checked as pairs."""
    from mai_ops.models.fidelity import ValidationDataError, staged_pairs

    copies = []
    for track in challenge.tracks:
        try:
            pairs = staged_pairs(s3, challenge, track, "test")
        except ValidationDataError as exc:
            raise ReleaseError(f"{event.name} publishes the test inputs, but {exc}") from None
        for item, _ in pairs:
            copies.append(
                (item.source, released_test_input_key(event.name, item.source), item.size)
            )
    return copies


def download_links(
    s3: Any, challenge: Challenge, manifest: dict, link_ttl_s: int = DEFAULT_LINK_TTL_S
) -> list[dict]:
    """Each released file with a presigned link valid for ``link_ttl_s`` seconds.

    ``name`` is the file's path within the release (``isp/train_001.npz``,
    ``test/depth/input/0001.png``), so files of two folders never look alike.
    """
    prefix = release_prefix(manifest["event"])
    return [
        {
            "name": f["key"][len(prefix) :] if f["key"].startswith(prefix) else f["key"],
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
