"""The workload of a simulator bench (``pbkv bench policies`` / ``headroom``): synthetic,
bundled sample or trace file, its train / replay split, and the predictor trained on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pbkv.cli import CliError

SYNTH_WORKFLOWS = 60  # --num-workflows of a synthetic workload when not given


def parse_knob(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise CliError(f"--synth {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in raw.split(",")]
    try:
        values = [json.loads(p) for p in parts]
    except json.JSONDecodeError:
        values = parts
    return key.strip(), tuple(values) if len(values) > 1 else values[0]


def load_workload(spec: str, num_workflows: int | None, seed: int, knobs: list[str]) -> list:
    from pbkv.training.trace_io import load_workflows

    if spec in ("static", "dynamic"):
        from pbkv.training.synth import synthesize

        try:
            return synthesize(
                spec, seed, num_workflows or SYNTH_WORKFLOWS, **dict(parse_knob(k) for k in knobs)
            )
        except (TypeError, ValueError) as exc:
            raise CliError(f"--workload {spec} --synth: {exc}") from None
    if knobs:
        raise CliError("--synth applies to synthetic workloads only")
    if spec.startswith("real:"):
        from pbkv.training.samples import sample_paths

        app = spec.split(":", 1)[1]
        paths = sample_paths()
        if app not in paths:
            raise CliError(
                f"--workload {spec}: no bundled sample {app!r}; known: "
                f"{', '.join(sorted(paths)) or '(none)'}"
            )
        workflows = load_workflows(paths[app])
    else:
        path = Path(spec)
        if not path.exists():
            raise CliError(f"--workload {spec}: not static, dynamic, real:<app> or a file")
        workflows = load_workflows(path)
    return workflows[:num_workflows] if num_workflows else workflows


def split(workflows: list, train_fraction: float) -> tuple[list, list]:
    if not 0 <= train_fraction < 1:
        raise CliError(f"--train-fraction must be in [0, 1), got {train_fraction}")
    n_train = int(len(workflows) * train_fraction)
    test = workflows[n_train:]
    if not test:
        raise CliError("the replay split is empty: lower --train-fraction or add workflows")
    # Replayed workflows start together (closed loop); arrival times are not used.
    return workflows[:n_train], test


def distinct_blocks(workflows: list, prompts: Any) -> int:
    seen: set[bytes] = set()
    for w in workflows:
        for i in range(len(w.steps)):
            seen.update(prompts.get(w, i)[1])
    return len(seen)


def int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--{name}: expected a comma list of integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise CliError(f"--{name}: values must be positive integers, got {text!r}")
    return values


def build_predictor(args: argparse.Namespace, train: list, everything: list) -> tuple[Any, str]:
    if args.model is not None:
        from pbkv.predictor.artifact import load_model

        try:
            return load_model(args.model), f"model {args.model}"
        except (OSError, ValueError) as exc:
            raise CliError(f"--model {args.model}: {exc}") from None
    from pbkv.predictor.registry import PREDICTORS

    if not train:
        raise CliError("--train-fraction 0 leaves nothing to train on; give --model")
    try:
        return PREDICTORS.create(
            args.predictor, workflows=train
        ), f"{args.predictor} trained on {len(train)} workflows"
    except ValueError as exc:
        raise CliError(f"--predictor: {exc}") from None
