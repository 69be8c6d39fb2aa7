"""``pbkv model make-tiny`` (``pbkv replay --engine vllm`` is the benchmarks', ``bench/cli.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pbkv.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    from pbkv.service.addons import ADDONS

    if "shadow" not in ADDONS:  # pbkv serve --shadow; imports zmq/msgspec only when used
        ADDONS.register("shadow")(_shadow_addon)
    model = sub.add_parser("model", help="local models for the real-engine adapter")
    model_sub = model.add_subparsers(dest="model_command", metavar="COMMAND")
    tiny = model_sub.add_parser(
        "make-tiny", help="write a small Llama model (no download; random or trained weights)"
    )
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--layers", type=int, default=2, help="decoder layers")
    tiny.add_argument("--hidden", type=int, default=256, help="hidden size")
    tiny.add_argument("--heads", type=int, default=4, help="attention heads")
    tiny.add_argument("--kv-heads", type=int, default=2, help="key/value heads (GQA)")
    tiny.add_argument("--intermediate", type=int, default=512, help="MLP intermediate size")
    tiny.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size")
    tiny.add_argument("--max-positions", type=int, default=8192, help="context length")
    tiny.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="weight dtype",
    )
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    tiny.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="train this many steps on text first (wide greedy margins; ~300 take a few "
        "minutes on a CPU; 0: random weights)",
    )
    tiny.add_argument(
        "--train-text",
        action="append",
        default=[],
        metavar="PATH",
        help="text file or folder to train on (repeatable; default: pbkv's docs)",
    )
    tiny.add_argument(
        "--tokenizer",
        action="store_true",
        help="also write a byte-level tokenizer with a chat template (OpenAI chat requests)",
    )
    tiny.set_defaults(func=_make_tiny)


def _shadow_addon(config):
    try:
        from pbkv.engine_adapter.shadow.serve import ShadowAddon
    except ImportError as exc:
        raise CliError(
            f"--shadow needs pyzmq and msgspec (pip install 'pbkv[shadow]'): {exc}"
        ) from None
    try:
        return ShadowAddon(config)
    except ValueError as exc:  # e.g. an unknown shadow_cost_model preset
        raise CliError(f"--shadow: {exc}") from None


def _make_tiny(args: argparse.Namespace) -> int:
    from pbkv.engine_adapter.models import TRAINING_REPORT, TinyModelConfig, make_tiny
    from pbkv.errors import require

    for module in ("torch", "transformers"):  # before any work
        require(module, "vllm-cpu", "pbkv model make-tiny")

    try:
        config = TinyModelConfig(
            layers=args.layers,
            hidden=args.hidden,
            heads=args.heads,
            kv_heads=args.kv_heads,
            intermediate=args.intermediate,
            vocab_size=args.vocab_size,
            max_positions=args.max_positions,
            seed=args.seed,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
        )
    except ValueError as exc:
        raise CliError(f"make-tiny: {exc}") from None
    if args.train_steps < 0:
        raise CliError(f"make-tiny: --train-steps must be 0 or positive, got {args.train_steps}")
    missing = [p for p in args.train_text if not Path(p).exists()]
    if missing:
        raise CliError(f"make-tiny: --train-text {missing[0]} does not exist")
    try:
        out = make_tiny(
            args.out,
            config,
            train_steps=args.train_steps,
            text_paths=[Path(p) for p in args.train_text] or None,
        )
    except ValueError as exc:
        raise CliError(f"make-tiny: {exc}") from None
    print(
        f"wrote {out} ({config.layers} layers, hidden {config.hidden}, "
        f"{config.kv_bytes_per_token} KV bytes/token)"
    )
    if args.train_steps:
        report = json.loads((out / TRAINING_REPORT).read_text())
        print(
            f"trained {report['train_steps']} steps on {report['text_tokens']:,} tokens: loss "
            f"{report['loss_first']:.2f} -> {report['loss_last']:.2f}, median greedy margin "
            f"{report['median_margin_before']:.3f} -> {report['median_margin_after']:.3f} "
            f"(top1-top2 logit)"
        )
    return 0
