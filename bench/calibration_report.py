"""``pbkv bench calibration``: the medians over seeds, and the table it prints
(``bench/calibration.py`` measures)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def summarize(runs: list[dict], args: argparse.Namespace, maps: dict) -> dict:
    """Medians over the seeds, per predictor and checkpoint (a figure some seed could not
    measure, an online window past the stream's end, is a median of the others or None)."""
    median: dict[str, list[dict]] = {}
    for name in runs[0]["rows"]:
        count = min(len(r["rows"][name]) for r in runs)
        median[name] = []
        for i in range(count):
            first = runs[0]["rows"][name][i]
            row: dict[str, Any] = {"observed": first["observed"]}
            for key in first.keys() - {"observed"}:
                values = [r["rows"][name][i][key] for r in runs]
                values = [v for v in values if v is not None]
                row[key] = float(np.median(values)) if values else None
            median[name].append(row)
    return {
        "train": [str(t) for t in args.train] if args.train else f"bundled --shift {args.shift}",
        "shifted": [str(t) for t in args.shifted] if args.shifted else None,
        "seeds": args.seeds,
        "folds": args.folds,
        "online_window": args.online_window,
        "maps": {m: {k: getattr(c, k) for k in c.__dataclass_fields__} for m, c in maps.items()},
        "stream_rounds": [r["stream_rounds"] for r in runs],
        "held_out_rounds": [r["held_out_rounds"] for r in runs],
        "median": median,
        "runs": runs,
    }


def format_report(report: dict) -> str:
    def cell(v: float | None, width: int = 8) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"

    lines = [
        f"train: {report['train']}; median of {report['seeds']} seeds; {report['folds']} "
        f"folds, stream rounds per fold {report['stream_rounds'][0]}; held-out rounds "
        f"(all folds) {report['held_out_rounds']}",
        f"{'':<25}{'held-out ECE':>24}{'held-out log-loss':>24}"
        f"{'online ECE, next ' + str(report['online_window']):>24}",
        f"{'predictor':<13}{'obs':>5}{'top1':>7}"
        + "".join(f"{h:>8}" for h in ("raw", "platt", "hist") * 3),
    ]
    for name, rows in report["median"].items():
        for row in rows:
            lines.append(
                f"{name:<13}{row['observed']:>5}{row['top1']:>7.3f}"
                + "".join(
                    cell(row[f"{prefix}_{m}"])
                    for prefix in ("ece", "log_loss", "online_ece")
                    for m in ("raw", "platt", "histogram")
                )
            )
    lines.append("fused held-out ECE beside its sampling floor (a perfectly calibrated model with")
    lines.append("the same probabilities) and its 5-95% workflow-bootstrap interval:")
    for row in report["median"]["fused"]:
        lines.append(
            f"  {row['observed']:>5} rounds: "
            + "; ".join(
                f"{m} {row[f'ece_{m}']:.3f} (floor {row[f'floor_{m}']:.3f}, "
                f"{row[f'ece_{m}_lo']:.3f}-{row[f'ece_{m}_hi']:.3f})"
                for m in ("platt", "histogram")
            )
        )
    return "\n".join(lines)
