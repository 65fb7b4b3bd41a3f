"""The bucket layout: every object key and prefix the pipelines read or write.

Keys are derived from the challenge's event, track, team and upload, never from the
clock, so a cleared task writes the same objects again. Nothing else in the project
spells a key by hand; docs/storage.md is this module in a table. Which bucket holds
what is the challenge's ``buckets`` (organizers, public, submissions, results).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# S3 (and MinIO) refuse object keys longer than this many bytes (UTF-8).
MAX_KEY_BYTES = 1024

# --- submissions bucket: <track>/<phase>/<team>/<filename> -----------------------------

FINAL_PHASE = "final"
VALIDATION_PHASE = "validation"
PHASES = (VALIDATION_PHASE, FINAL_PHASE)


class BadUploadKey(ValueError):
    """A submissions-bucket key that is not ``<track>/<phase>/<team>/<filename>``."""


@dataclass(frozen=True)
class UploadKey:
    """The parts of a participant's upload key."""

    track: str
    phase: str
    team: str
    filename: str

    @property
    def key(self) -> str:
        return upload_key(self.track, self.phase, self.team, self.filename)


def upload_key(track: str, phase: str, team: str, filename: str) -> str:
    return f"{track}/{phase}/{team}/{filename}"


def parse_upload_key(key: str) -> UploadKey:
    """``"<track>/<phase>/<team>/<filename>"`` -> its parts; :class:`BadUploadKey` otherwise.

    The message is written for the team that uploaded (it goes into the reply email).
    """
    parts = key.split("/")
    shown = repr(key)
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise BadUploadKey(f"the upload key {shown} has control characters")
    if len(parts) != 4 or not all(parts) or any(p in (".", "..") for p in parts):
        raise BadUploadKey(
            f"the upload key {shown} is not of the form <track>/<phase>/<team>/<file>.zip "
            "(for example learned_isp/validation/your_team/submission.zip)"
        )
    return UploadKey(*parts)


def loose_upload_key(key: str) -> UploadKey | None:
    """The four parts of a four-part key even when :func:`parse_upload_key` refuses it.

    A malformed upload is still recorded under its track, phase and team, so the team
    it names hears why it was refused.
    """
    parts = key.split("/")
    return UploadKey(*parts) if len(parts) == 4 else None


def upload_owner(key: str) -> str:
    """Whose upload ``key`` is, as far as its shape tells: ``<track>/<phase>/<team>``.

    The validation server answers one owner's uploads in order (their quota counts the
    earlier ones); a key too short to name a team is its own owner.
    """
    parts = key.split("/")
    return "/".join(parts[:3]) if len(parts) >= 4 else key


def is_final_upload(key: str) -> bool:
    """Under ``<track>/final/``: pre-checked on arrival, the last one in time frozen."""
    parts = key.split("/")
    return len(parts) > 1 and parts[1] == FINAL_PHASE


def final_phase_prefix(track: str) -> str:
    """Every final-phase upload of a track."""
    return f"{track}/{FINAL_PHASE}/"


def final_upload_prefix(track: str, team: str) -> str:
    """A team's final-phase uploads for a track."""
    return f"{track}/{FINAL_PHASE}/{team}/"


def final_upload_team(key: str) -> str | None:
    """The team folder of a key under ``<track>/final/<team>/...``, else None.

    Deeper keys are included, so a misplaced final upload is named in that team's
    receipt; only keys of exactly four parts (:func:`parse_upload_key`) are frozen.
    """
    parts = key.split("/")
    return parts[2] if len(parts) >= 4 and parts[1] == FINAL_PHASE else None


# --- results bucket ---------------------------------------------------------------------

UPLOAD_RECORDS = "uploads/"


# A long upload key's record sits under its owner with this mark and a digest instead.
LONG_KEY_MARK = "~long"
_OWNER_BYTES = 256


def version_digest(upload_key: str, etag: str) -> str:
    """A digest of one stored version of an upload: its exact key and its ETag."""
    exact = f"{upload_key}\n{etag.strip(chr(34))}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(exact).hexdigest()


def upload_record_key(upload_key: str, etag: str) -> str:
    """One record per stored version: a re-upload under the same name is a new upload.

    ``uploads/<upload key>/<etag>.json``, unless that is longer than S3 allows (an
    upload key near the 1024-byte limit): then ``uploads/<owner>/~long/<digest>/<etag>.json``,
    still under the owner's records (:func:`team_records_prefix`). The record itself
    holds the exact key and etag; read those, not the record's key.
    """
    etag = etag.strip(chr(34))
    plain = f"{UPLOAD_RECORDS}{upload_key}/{etag}.json"
    if _fits(plain):
        return plain
    owner = upload_owner(upload_key)
    owner = owner if owner != upload_key and len(owner.encode()) <= _OWNER_BYTES else ""
    shown = etag if re.fullmatch(r"[A-Za-z0-9-]{1,64}", etag) else "v"
    digest = version_digest(upload_key, etag)
    return f"{UPLOAD_RECORDS}{owner}{'/' if owner else ''}{LONG_KEY_MARK}/{digest}/{shown}.json"


def parse_upload_record_key(key: str) -> tuple[str, str]:
    """(upload key, etag) of a record key written by :func:`upload_record_key`.

    Exact for every upload key short enough to be spelled out in its record key; for a
    long one the record's own ``key`` and ``etag`` are the truth.
    """
    upload, _, etag = key[len(UPLOAD_RECORDS) : -len(".json")].rpartition("/")
    return upload, etag


def _fits(key: str) -> bool:
    return len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES


def team_records_prefix(upload_key: str) -> str:
    """The records of every upload with the same track, phase and team as ``upload_key``."""
    return UPLOAD_RECORDS + "/".join(upload_key.split("/")[:3]) + "/"


UNKNOWN_TEAM_UPLOADS = "unknown-team/"


def unknown_team_prefix(team: str) -> str:
    """The uploads refused as ``unknown_team`` that name ``team`` (any string, hashed)."""
    digest = hashlib.sha256(team.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{UNKNOWN_TEAM_UPLOADS}{digest}/"


def unknown_team_key(upload_key: str, etag: str, team: str) -> str:
    """A note that this stored version was refused as ``unknown_team``: the sweep judges
    it again once its team is registered (the list may have been broken)."""
    return f"{unknown_team_prefix(team)}{version_digest(upload_key, etag)}.json"


PROCESSING = "processing/"


def processing_key(upload_key: str, etag: str) -> str:
    """The marker of an upload being processed: written when its processing starts,
    removed with its record stored; one left behind is work that never finished."""
    return f"{PROCESSING}{version_digest(upload_key, etag)}.json"


FROZEN = "frozen/"
FROZEN_MANIFEST = f"{FROZEN}manifest.json"


def frozen_key(track: str, team: str, filename: str) -> str:
    """The immutable copy of a team's final submission."""
    return f"{FROZEN}{track}/{team}/{filename}"


SCORES = "scores/"
# What each scoring stage of one frozen submission left, by its bytes' sha256: a cleared
# task finds its stage's result and the next stage's input under the same key.
STAGE_FILES = ("checks.json", "benchmark.json", "fidelity.json", "record.json")
RANKING = f"{SCORES}ranking.json"  # the ranked table in force (validated, applied)
APPROVAL = f"{SCORES}approval.json"  # which ranked table an organizer approved, by whom


def submission_prefix(track: str, team: str, sha256: str) -> str:
    """Everything stored for one frozen submission: its stage results and models."""
    return f"{SCORES}{track}/{team}/{sha256}/"


def stage_key(track: str, team: str, sha256: str, name: str) -> str:
    """One stage file of a frozen submission (``checks.json``, ``model.tflite``, ...)."""
    return submission_prefix(track, team, sha256) + name


def score_key(track: str, team: str, sha256: str) -> str:
    """The scored record of one frozen submission: one per (track, team, model sha256)."""
    return stage_key(track, team, sha256, "record.json")


def ranking_run_key(run_id: str) -> str:
    """The ranked table one scoring run computed (kept whether applied or not)."""
    return f"{SCORES}runs/{_safe_segment(run_id)}.json"


def _safe_segment(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)[:200]


NOTICE_MARKERS = "notifications/"
NOTICE_INTENTS = "notification-intents/"


def notice_marker_key(notice_key: str) -> str:
    """The sent-marker of one email (the send's result), written once the relay took it."""
    return f"{NOTICE_MARKERS}{notice_key}.json"


def notice_intent_key(notice_key: str) -> str:
    """The intent of one email, written before each try to send it.

    An intent without a sent-marker is an email that may have gone out: a crash, or a
    storage failure, came between the send and the marker.
    """
    return f"{NOTICE_INTENTS}{notice_key}.json"


def notice_markers_prefix(notice_prefix: str) -> str:
    """The sent-markers of every notice whose key starts with ``<notice_prefix>/``."""
    return f"{NOTICE_MARKERS}{notice_prefix}/"


def parse_notice_marker_key(key: str) -> str:
    """The notice key of a marker key written by :func:`notice_marker_key`."""
    return key[len(NOTICE_MARKERS) : -len(".json")]


# --- organizers' bucket -----------------------------------------------------------------


def data_prefix(event: str) -> str:
    """The files to publish at ``event`` (e.g. train_data_release)."""
    return f"data/{event}/"


VALIDATION_DATA = "validation"
TEST_DATA = "test"
DATA_SET_KINDS = (VALIDATION_DATA, TEST_DATA)
INPUT_FOLDER = "input"
GROUND_TRUTH_FOLDER = "gt"


def data_set_prefix(kind: str, track: str) -> str:
    """A track's validation or hidden test pairs (``input/`` and ``gt/`` below it)."""
    if kind not in DATA_SET_KINDS:
        raise ValueError(f"unknown data set kind {kind!r}; known: {', '.join(DATA_SET_KINDS)}")
    return f"{kind}/{track}/"


def data_set_keys(kind: str, track: str) -> tuple[str, str]:
    """(input prefix, ground-truth prefix) of a track's ``validation`` or ``test`` pairs.

    Each pair is ``<input prefix><name>.png|.npy`` and ``<ground-truth prefix><name>.png|.npy``.
    """
    base = data_set_prefix(kind, track)
    return (f"{base}{INPUT_FOLDER}/", f"{base}{GROUND_TRUTH_FOLDER}/")


def has_ground_truth_segment(key: str) -> bool:
    """Whether a folder of ``key`` is named ``gt`` (any case): ground truth, never public."""
    return any(part.lower() == GROUND_TRUTH_FOLDER for part in key.split("/")[:-1])


# --- public bucket ----------------------------------------------------------------------


def release_prefix(event: str) -> str:
    """What participants download after ``event``."""
    return f"releases/{event}/"


def release_manifest_key(event: str) -> str:
    return f"{release_prefix(event)}manifest.json"


def release_sums_key(event: str) -> str:
    return f"{release_prefix(event)}SHA256SUMS"


def released_test_input_key(event: str, staged_key: str) -> str:
    """Where a staged test input (``test/<track>/input/<name>``) is published at ``event``."""
    return release_prefix(event) + staged_key


PRELIMINARY_JSON = "results/preliminary.json"
PRELIMINARY_CSV = "results/preliminary.csv"


# The leaderboards, readable by anyone with the link (the public bucket's policy allows
# anonymous reads). The final phase's (published with the preliminary results) sits
# under ``leaderboard/``; the validation phase's (each team's best verified validation
# upload) under ``leaderboard/validation/``. A track id may not be ``validation``.
LEADERBOARD = "leaderboard/"
LEADERBOARD_INDEX = "index.html"
# Each track's files, in the order the index page lists them.
LEADERBOARD_TRACK_FILES = ("index.html", "results.csv", "results.json", "plot.svg", "plot.png")


def leaderboard_prefix(phase: str) -> str:
    """Where one phase's leaderboard sits: ``leaderboard/`` or ``leaderboard/validation/``."""
    if phase == FINAL_PHASE:
        return LEADERBOARD
    if phase == VALIDATION_PHASE:
        return f"{LEADERBOARD}{VALIDATION_PHASE}/"
    raise ValueError(f"no leaderboard for phase {phase!r}; known: {', '.join(PHASES)}")


def leaderboard_index_key(phase: str) -> str:
    """The page that links every track's leaderboard of ``phase``."""
    return leaderboard_prefix(phase) + LEADERBOARD_INDEX


def leaderboard_file(track: str, name: str) -> str:
    """One file of a track's leaderboard, relative to its phase's prefix."""
    if name not in LEADERBOARD_TRACK_FILES:
        raise ValueError(f"{name!r} is not a leaderboard file; known: {LEADERBOARD_TRACK_FILES}")
    return f"{track}/{name}"


def leaderboard_key(phase: str, track: str, name: str) -> str:
    """``leaderboard/[validation/]<track>/<name>`` in the public bucket."""
    return leaderboard_prefix(phase) + leaderboard_file(track, name)


# Results bucket: what the validation leaderboard has read of each upload record (by the
# record's key and ETag), so that an update reads only the records new since the last.
VALIDATION_BOARD_CACHE = f"{LEADERBOARD}validation-records.json"
