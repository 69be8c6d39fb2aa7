"""``pbkv traces synth``: the CLI of ``synth.py`` (training/cli.py delegates here).

Stdlib-only at import time; the heavy work starts in ``run``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbkv.trace import Workflow
from pbkv.training.synth import ARRIVALS, KINDS, KNOBS, iter_workflows, make_config

KNOB_HELP = {
    "system_tokens": "per-agent system prompt length range",
    "new_tokens": "new (non-shared) prompt tokens per step, range",
    "output_tokens": "output tokens per step, range",
    "pipeline_len": "static: agents per pipeline, range",
    "preamble_tokens": "app-wide preamble shared by every agent (0: none)",
    "max_fanout": "largest parallel group (1: none)",
    "max_loops": "dynamic: most loop-backs per workflow",
    "concurrency": "closed-loop arrivals: workflows running at once",
    "num_apps": "dynamic: the first N apps; static: N fixed pipelines",
    "num_tenants": "tenants the workflows are spread over",
    "history_growth": "share of each step's new+output tokens that joins the history",
    "noise": "dynamic: P(a text cue is flipped / a router misroutes)",
    "rate_per_s": "poisson arrivals: workflows started per second",
    "pause_s": "tool/think pause before each later round, seconds range",
    "session_tasks": "dynamic: tasks chained into one session (shared history)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        choices=KINDS,
        required=True,
        help="static (KVFlow-style pipelines) or dynamic (PBKV-style)",
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--num-workflows", type=int, default=1000, help="workflows generated")
    parser.add_argument("--out", type=Path, required=True, help="JSONL output (.gz ok)")
    knobs = parser.add_argument_group("knobs (defaults depend on --kind; see docs/workloads.md)")
    for name in ("system_tokens", "new_tokens", "output_tokens", "pipeline_len"):
        knobs.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            nargs=2,
            metavar=("LOW", "HIGH"),
            help=KNOB_HELP[name],
        )
    for name in (
        "preamble_tokens",
        "max_fanout",
        "max_loops",
        "concurrency",
        "num_apps",
        "num_tenants",
        "session_tasks",
    ):
        knobs.add_argument(f"--{name.replace('_', '-')}", type=int, help=KNOB_HELP[name])
    knobs.add_argument(
        "--pause-s", type=float, nargs=2, metavar=("LOW", "HIGH"), help=KNOB_HELP["pause_s"]
    )
    for name in ("history_growth", "noise", "rate_per_s"):
        knobs.add_argument(f"--{name.replace('_', '-')}", type=float, help=KNOB_HELP[name])
    knobs.add_argument(
        "--arrival",
        choices=ARRIVALS,
        help="poisson (open loop at --rate-per-s) or closed (--concurrency)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pbkv.cli import CliError

    knobs = {name: getattr(args, name) for name in KNOBS if getattr(args, name, None) is not None}
    try:
        config = make_config(args.kind, args.seed, args.num_workflows, **knobs)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    workflows = list(
        tqdm(
            iter_workflows(config),
            total=config.num_workflows,
            unit="wf",
            desc=f"synth {config.kind}",
            disable=config.num_workflows < 1000,
        )
    )
    _write(args.out, workflows)
    num_steps = sum(len(w.steps) for w in workflows)
    print(
        f"wrote {len(workflows)} workflows, {num_steps} steps to {args.out} "
        f"({config.kind}, seed {config.seed})"
    )
    return 0


def _write(path: Path, workflows: list[Workflow]) -> None:
    try:
        from pbkv.training.trace_io import write_workflows
    except ModuleNotFoundError as exc:
        if exc.name != "pbkv.training.trace_io":
            raise
    else:
        write_workflows(path, workflows)
        return
    # trace_io not written yet: plain JSONL in the same format.
    import gzip
    import json

    from pbkv.trace import to_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for workflow in workflows:
            fh.write(json.dumps(to_dict(workflow), separators=(",", ":")) + "\n")
