"""Upload → reply-email latency of the validation server on the embedded default.

Starts the real stack (``python -m mai_ops.dev.stack``: Airflow standalone with its
scheduler, triggerer and LocalExecutor, the local S3-compatible server with its SQS
queue, the local SMTP server) on a small challenge whose validation phase is open
now, uploads N real TFLite submissions one after the other, and measures for each
the time from the upload's completion to the moment its reply email is stored.
The first upload warms the stack up and is not counted.

Reference: the MAI pages promise runtimes "instantaneously or within 24 hours";
mai-ops targets p50 <= 30 s and p95 <= 60 s.

    .venv/bin/python bench/validation_turnaround.py [-n 10] [--gap 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from email import message_from_bytes, policy
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mai_ops.challenge.config import Track  # noqa: E402
from mai_ops.dev.embedded import free_port, s3_client  # noqa: E402
from mai_ops.dev.reference_models import build_reference_tflite  # noqa: E402
from mai_ops.dev.stack import spawn  # noqa: E402

TARGET_P50, TARGET_P95 = 30.0, 60.0


def bench_challenge(today: dt.date) -> dict:
    day = dt.timedelta(days=1)
    return {
        "id": "turnaround",
        "title": "Turnaround bench",
        "participants": {"source": "file", "path": "teams.csv"},
        "buckets": {
            "organizers": "turnaround-organizers",
            "submissions": "turnaround-submissions",
            "public": "turnaround-public",
            "results": "turnaround-results",
        },
        "uploads_queue": "turnaround-uploads",
        "timeline": [
            {
                "name": "train_data_release",
                "title": "Data",
                "date": str(today - 2 * day),
                "phase": "release_data",
            },
            {
                "name": "validation_server_online",
                "title": "Validation server online",
                "date": str(today - day),
                "phase": "validation_server",
            },
            {
                "name": "final_deadline",
                "title": "Final deadline",
                "date": str(today + 30 * day),
                "phase": "final_collection",
            },
        ],
        "devices": [
            {"name": "cpu", "backend": "litert", "threads": 1, "runs": 20, "min_seconds": 0.5}
        ],
        "tracks": [
            {
                "id": "denoise",
                "title": "Denoising",
                "task": "noisy to clean",
                "device": "cpu",
                "inputs": [{"shape": [1, 128, 128, 3], "dtype": "float32"}],
                "outputs": [{"shape": [1, 128, 128, 3], "dtype": "float32"}],
                "metrics": ["psnr"],
                "score": {"formula": "2 ** (2 * psnr) / runtime"},
                "limits": {"per_day": 1000, "total": 1000},
            }
        ],
    }


def api_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v2/dags?limit=100", timeout=5
        ) as r:
            return any(
                d["dag_id"] == "turnaround__validation_uploads" for d in json.load(r)["dags"]
            )
    except OSError:
        return False


def replies(outbox: Path) -> dict[str, float]:
    """Upload key -> time its reply was stored (file modification time)."""
    found = {}
    for path in outbox.glob("*.eml"):
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        notice = msg.get("X-MAI-Notice", "")
        if "/upload/" in notice:
            # .../upload/<key>/<etag>/<status>
            key = notice.split("/upload/", 1)[1].rsplit("/", 2)[0]
            found[key] = path.stat().st_mtime
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="measured uploads")
    parser.add_argument("--gap", type=float, default=5.0, help="seconds between uploads")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a reply after")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mai-turnaround-") as tmp:
        root = Path(tmp)
        challenges = root / "challenges"
        challenges.mkdir()
        spec = bench_challenge(dt.date.today())
        (challenges / "turnaround.yaml").write_text(yaml.safe_dump(spec))
        (challenges / "teams.csv").write_text(
            "team_id,team_name,email,tracks\nbench,Bench Team,bench@teams.example,denoise\n"
        )
        model = build_reference_tflite(Track.model_validate(spec["tracks"][0]))
        port, s3_port = free_port(), free_port()
        env = {**os.environ, "MAI_OPS_CHALLENGES_DIR": str(challenges)}
        home = root / "airflow"
        stack = spawn(port, s3_port, home, root / "stack.log", env)
        try:
            deadline = time.monotonic() + 300
            while not api_ready(port):
                if stack.poll() is not None or time.monotonic() > deadline:
                    print((root / "stack.log").read_text()[-3000:])
                    print("the stack did not come up")
                    return 1
                time.sleep(2)
            s3 = s3_client(f"http://127.0.0.1:{s3_port}")
            outbox = home / "outbox"
            latencies: list[float] = []
            for i in range(args.n + 1):
                archive = io.BytesIO()
                with zipfile.ZipFile(archive, "w") as zf:
                    zf.writestr("model.tflite", model)
                    zf.writestr("readme.txt", f"upload {i}\n")  # a distinct sha256 each time
                key = f"denoise/validation/bench/upload-{i:03d}.zip"
                s3.put_object(Bucket="turnaround-submissions", Key=key, Body=archive.getvalue())
                sent = time.time()
                limit = time.monotonic() + args.timeout
                while key not in (got := replies(outbox)):
                    if time.monotonic() > limit:
                        print(f"no reply for {key} within {args.timeout:.0f} s")
                        return 1
                    time.sleep(0.2)
                latency = got[key] - sent
                label = "warm-up" if i == 0 else f"upload {i:2d}"
                print(f"{label}: reply after {latency:6.1f} s", flush=True)
                if i:
                    latencies.append(latency)
                time.sleep(args.gap)
        finally:
            os.killpg(stack.pid, signal.SIGINT)
            try:
                stack.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)

    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    print(f"\nupload -> reply email over {len(latencies)} uploads on the embedded default:")
    print(f"  p50 {p50:.1f} s   p95 {p95:.1f} s   max {latencies[-1]:.1f} s")
    print(
        f"  against the targets p50 <= {TARGET_P50:.0f} s, p95 <= {TARGET_P95:.0f} s: "
        f"ratio p50/target {p50 / TARGET_P50:.2f}, p95/target {p95 / TARGET_P95:.2f}"
    )
    met = p50 <= TARGET_P50 and p95 <= TARGET_P95
    print(f"  targets {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
