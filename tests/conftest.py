"""Shared fixtures: a real S3-compatible server and a real SMTP server on loopback.

Airflow reads its settings when first imported, so they are set here, before any
test module imports it: a throw-away AIRFLOW_HOME with a SQLite metadata DB and
the project's DAG folder.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
CHALLENGES = PROJECT / "include" / "challenges"
MAI2021 = CHALLENGES / "mai2021.yaml"

_HOME = Path(tempfile.mkdtemp(prefix="mai-ops-tests-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # The approval step is answered through the REST API, as the UI does, without a login.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        # The in-process API's tokens are signed with a key of the recommended length.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "MAI_OPS_CHALLENGES_DIR": str(CHALLENGES),
    }
)


def rest_api(
    port: int, method: str, path: str, body: dict | None = None, timeout: float = 15
) -> dict:
    """One call to a running stack's REST API, without credentials (the stack needs none)."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


@pytest.fixture(scope="session")
def s3_server():
    from mai_ops.dev.embedded import LocalS3

    server = LocalS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server):
    """A client on a clean server: every bucket of mai2021 exists and is empty.

    The submissions bucket is versioned, as the project creates it; every version of
    every object is removed, so no test sees an earlier test's uploads.
    """
    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev.embedded import ensure_challenge_buckets
    from mai_ops.infra.storage import list_versions

    client = s3_server.client()
    buckets = load_challenge(MAI2021).buckets
    ensure_challenge_buckets(client, buckets)
    for bucket in buckets.model_dump().values():
        for entry in list(list_versions(client, bucket)):
            client.delete_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])
    return client


@pytest.fixture
def smtp(tmp_path):
    from mai_ops.dev.embedded import LocalSMTP

    server = LocalSMTP(tmp_path / "outbox").start()
    yield server
    server.stop()


@pytest.fixture
def airflow_connections(s3_server, smtp, monkeypatch):
    """AIRFLOW_CONN_* for the providers' hooks, pointing at the loopback servers."""
    from mai_ops.dev.embedded import connection_env

    for key, value in connection_env(s3_server.endpoint_url, smtp.host, smtp.port).items():
        monkeypatch.setenv(key, value)
    return smtp


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated SQLite metadata DB, once per session."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


# A copy of mai2021 with its dates moved so the final deadline is tomorrow: uploads
# made by the tests are judged by the storage server's clock, as in production.
from mai_ops.dev.demo import rehearsal_copy  # noqa: E402

REHEARSAL = rehearsal_copy(MAI2021, _HOME / "rehearsal")

_MODEL_DIR = _HOME / "reference-models"
_BUILD = """
import sys
from pathlib import Path
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.reference_models import build_reference_tflite
challenge = load_challenge(sys.argv[1])
for track in challenge.tracks:
    Path(sys.argv[2], track.id + ".tflite").write_bytes(build_reference_tflite(track))
"""


def reference_model(track_id: str) -> bytes:
    """A real TFLite model meeting the mai2021 track's spec, built once per session.

    Built in a child process, so TensorFlow never loads into the test process.
    """
    path = _MODEL_DIR / f"{track_id}.tflite"
    if not path.exists():
        _MODEL_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-c", _BUILD, str(MAI2021), str(_MODEL_DIR)],
            check=True,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    return path.read_bytes()


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (or is a zombie), waiting a moment for a SIGKILL to land."""
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in {"Z", "X"}:
            return True
        time.sleep(0.05)
    return False


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive holding ``members`` (name: bytes), as a team would upload it."""
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return archive.getvalue()


@functools.cache
def synthetic_test_pairs(challenge_file: Path, track_id: str) -> dict:
    """One synthetic hidden test pair of a track, generated once per session."""
    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev.test_data import synthetic_pairs

    return synthetic_pairs(load_challenge(challenge_file).track(track_id), count=1)


def stage_test_data(s3, challenge_file: Path, *track_ids: str) -> None:
    """One synthetic hidden test pair per track (scoring needs a staged test set)."""
    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev.test_data import stage_pairs

    bucket = load_challenge(challenge_file).buckets.organizers
    for track_id in track_ids:
        stage_pairs(s3, bucket, track_id, synthetic_test_pairs(challenge_file, track_id))
