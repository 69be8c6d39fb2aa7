"""``pbkv train`` and ``pbkv evaluate``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pbkv.cli import CliError, warn


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the fused next-agent predictor")
    p.add_argument(
        "--traces", nargs="+", required=True, metavar="FILE", help="trace files (JSONL, .gz ok)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="model directory to write: new, empty, or a previous model (replaced "
        "whole, atomically)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also write to a non-empty DIR that is not a model (DIR is kept, "
        "renamed to DIR.replaced-<time>)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (split, samplers, models)")
    p.add_argument(
        "--from",
        dest="from_model",
        metavar="MODEL",
        help="continue from this fused model (history counts, warm-started weights)",
    )
    p.add_argument(
        "--experts",
        default=None,
        help="comma-separated experts (default: markov,recency,retrieval,linear)",
    )
    p.add_argument(
        "--embedding",
        action="store_true",
        help="add the sentence-embedding expert (all-MiniLM-L6-v2, offline; slow)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip malformed trace lines (logged) instead of failing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("evaluate", help="evaluate a model and every baseline")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="a trained model directory")
    src.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="instead of a model: K-fold cross-validation by workflow (trains "
        "the fused model K times on the traces; for small real-log sets)",
    )
    e.add_argument("--seed", type=int, default=0, help="with --cv: training seed")
    e.add_argument(
        "--traces", nargs="+", required=True, metavar="FILE", help="held-out trace files"
    )
    e.add_argument("--out", type=Path, metavar="FILE", help="also write the results as JSON")
    e.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE",
        help="print the results as JSON instead of the table (--json FILE: the "
        "deprecated spelling of --out FILE)",
    )
    e.add_argument(
        "--horizon", type=int, default=4, help="rounds ahead for the within-H recall and precision"
    )
    e.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip malformed trace lines (logged) instead of failing",
    )
    e.set_defaults(func=run_evaluate)


def _load(paths: list[str], skip_invalid: bool):
    from pbkv.training.trace_io import TraceError
    from pbkv.training.train import load_traces

    try:
        return load_traces(paths, skip_invalid=skip_invalid)
    except (FileNotFoundError, TraceError) as exc:
        raise CliError(str(exc)) from None


def _progress_bar(enabled: bool):
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    closed: set[str] = set()

    def report(stage: str, done: int, total: int) -> None:
        if not enabled or stage in closed:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            closed.add(stage)

    return report


def run_train(args: argparse.Namespace) -> int:
    from pbkv.predictor.artifact import ArtifactError, check_model_dir
    from pbkv.predictor.experts import require_experts
    from pbkv.predictor.fused import FusedConfig
    from pbkv.training.train import train

    check_model_dir(args.out, args.force)  # before any work: a bad --out fails at once
    if args.from_model is not None:
        _read_metadata(args.from_model)
    kwargs = {"seed": args.seed}
    if args.experts:
        kwargs["experts"] = tuple(x.strip() for x in args.experts.split(",") if x.strip())
    if args.embedding:
        experts = kwargs.get("experts", FusedConfig().experts)
        kwargs["experts"] = (*[e for e in experts if e != "embedding"], "embedding")
    try:
        config = FusedConfig(**kwargs)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    require_experts(config.experts)  # before any work: a missing extra fails at once
    workflows = _load(args.traces, args.skip_invalid)
    try:
        model, meta = train(
            workflows,
            args.out,
            config,
            args.from_model,
            _progress_bar(not args.no_progress),
            sources=args.traces,
            force=args.force,
        )
    except (ValueError, ArtifactError) as exc:
        raise CliError(str(exc)) from None
    print(
        f"trained on {meta['num_workflows']} workflows ({len(meta['workflows_per_app'])} apps) "
        f"in {meta['train_seconds']:.1f} s -> {args.out}"
    )
    for app, acc in sorted(model.app_accuracy.items()):
        print(f"  {app}: validation top-1 {acc:.3f}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from pbkv.predictor.artifact import ArtifactError, load_model
    from pbkv.training.evaluate import evaluate_all

    if args.horizon < 1:
        raise CliError(f"--horizon must be >= 1, got {args.horizon}")
    if isinstance(args.json, str):  # the old spelling
        warn("--json FILE is deprecated; use --out FILE (--json alone prints JSON)")
        args.out, args.json = Path(args.json), False
    if args.out and not args.out.resolve().parent.is_dir():
        raise CliError(f"--out {args.out}: folder {args.out.parent} does not exist")
    model = None
    if args.model is not None:
        try:
            model = load_model(args.model)
        except ArtifactError as exc:
            raise CliError(str(exc)) from None
    workflows = _load(args.traces, args.skip_invalid)
    if not workflows:
        raise CliError("no workflows in the evaluation traces")
    if model is not None:
        warning = overlap_warning(_read_metadata(args.model), workflows)
        if warning:
            print(warning, file=sys.stderr)
        results = evaluate_all(model, workflows, args.horizon)
    else:
        results = _cross_validate(workflows, args)
    as_json = json.dumps(
        {p: {app: m.to_dict() for app, m in r.items()} for p, r in results.items()},
        indent=2,
        sort_keys=True,
    )
    print(as_json if args.json else format_table(results))
    if args.out:
        args.out.write_text(as_json)
    return 0


def _read_metadata(path: str) -> dict:
    from pbkv.predictor.artifact import read_metadata

    return read_metadata(path)  # an ArtifactError is a UserError: `pbkv: error: ...`


def overlap_warning(meta: dict, workflows) -> str | None:
    """A warning when some evaluated workflows were in the model's training set (by id or by
    content digest), with the held-out top-1 the model recorded at training; None if none
    were. Models from before the record was kept say that overlap cannot be checked."""
    from pbkv.training.train import workflow_digest

    seen = meta.get("training_set")
    if not seen:
        return (
            "note: this model records no training set (made by an older pbkv); "
            "overlap with the evaluation traces cannot be checked"
        )
    ids, digests = set(seen.get("workflow_ids", [])), set(seen.get("digests", []))
    overlap = sum(w.workflow_id in ids or workflow_digest(w) in digests for w in workflows)
    if not overlap:
        return None
    held = (meta.get("metrics") or {}).get("validation_top1_per_app") or {}
    figures = ", ".join(f"{app} {acc:.3f}" for app, acc in sorted(held.items())) or "none"
    return (
        f"warning: {overlap} of the {len(workflows)} evaluated workflows were in this "
        f"model's training set, so its figures below are not held-out results.\n"
        f"held-out top-1 recorded at training (validation split or out-of-fold): "
        f"{figures}"
    )


def _cross_validate(workflows, args: argparse.Namespace):
    from pbkv.predictor.fused import FusedConfig, FusedPredictor
    from pbkv.training.evaluate import cross_validate

    if args.cv < 2:
        raise CliError(f"--cv must be >= 2, got {args.cv}")
    config = FusedConfig(seed=args.seed)

    def progress(done: int, total: int) -> None:
        print(f"fold {done}/{total} done", file=sys.stderr)

    return cross_validate(
        workflows,
        args.cv,
        lambda train: FusedPredictor.fit(train, config),
        args.horizon,
        args.seed,
        progress,
    )


def format_table(results) -> str:
    cols = (
        "examples",
        "top1",
        "top3",
        "log_loss",
        "brier",
        "ece",
        "within_recall",
        "within_precision",
    )
    apps = sorted({app for r in results.values() for app in r}, key=lambda a: (a == "all", a))
    width = max(len(p) for p in results) + 2
    lines = []
    for app in apps:
        lines.append(f"== {app}")
        lines.append("predictor".ljust(width) + " ".join(c.rjust(9)[:9] for c in cols))
        for name, r in results.items():
            m = r.get(app)
            if m is None:
                continue
            d = m.to_dict()
            cells = [f"{d['examples']:>9d}"] + [
                "      nan" if math.isnan(d[c]) else f"{d[c]:>9.3f}" for c in cols[1:]
            ]
            lines.append(name.ljust(width) + " ".join(cells))
    return "\n".join(lines)
