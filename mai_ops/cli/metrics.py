"""``mai-ops metrics``: a fidelity metric over two folders of files matched by name.

Exit 0 computed, 2 for any error (a missing partner, a size mismatch, an unreadable
file; the message names the file) and usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from mai_ops.models.metric_files import MetricFileError, evaluate_folders, metric_name

CHOICES = ("psnr", "ssim", "si-rmse", "rmse", "top1", "top3")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="PSNR, SSIM, si-RMSE, RMSE or top-k accuracy of a folder of predictions",
        description=(
            "Compute a fidelity metric between the files of two folders, paired by name "
            "without extension: PNG (8/16-bit, 1-4 channels) or .npy images; for top1/top3 "
            ".npy class-score vectors against .npy or .txt integer labels. Exit 0 computed, "
            "2 on any error (the message names the file)."
        ),
    )
    p.add_argument(
        "--metric",
        action="append",
        required=True,
        metavar="|".join(CHOICES),
        help="the metric; repeat for several (each pair is read once)",
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predictions")
    p.add_argument("--target", required=True, metavar="DIR", help="folder of ground truths")
    p.add_argument(
        "--data-range",
        type=float,
        metavar="R",
        help="PSNR/SSIM data range (default: from the target's type: 255 for 8-bit, "
        "65535 for 16-bit, 1.0 for floats)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_metrics_command)


def _metrics_command(args: argparse.Namespace) -> int:
    try:
        names = list(dict.fromkeys(metric_name(m) for m in args.metric))
        results = evaluate_folders(names, args.pred, args.target, args.data_range)
    except MetricFileError as exc:
        print(f"mai-ops metrics: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        body = [r.as_json() for r in results]
        print(json.dumps(body[0] if len(body) == 1 else body, indent=2))
    else:
        print(format_table(results))
    return 0


def format_table(results) -> str:
    """One row per pair, one column per metric, and the mean under them."""
    names = list(results[0].per_image)
    width = max(len("mean"), *(len(n) for n in names))
    head = [f"{'name':<{width}}"] + [f"{r.metric:>12}" for r in results]
    lines = ["  ".join(head)]
    for name in names:
        cells = [f"{name:<{width}}"] + [_cell(r.per_image[name]) for r in results]
        lines.append("  ".join(cells))
    lines.append("  ".join([f"{'mean':<{width}}"] + [_cell(r.mean) for r in results]))
    return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{value:>12.6f}"
