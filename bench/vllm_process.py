"""The engine processes of ``pbkv bench vllm`` (and ``pbkv bench shadow``) and their inputs:
the synthetic workloads' knobs, the KV cache size in bytes, the tiny model, and running one
``SessionSpec`` in a fresh Python process (vLLM keeps process-global state; a process per
engine also guarantees nothing is left running)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pbkv.cli import CliError

DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    # The regime where the cache decides latency (chosen with `pbkv bench policies --preset
    # vllm-cpu`, see docs/vllm-adapter.md): long per-agent system prompts, short outputs, a GPU
    # KV cache of ~150 blocks against a working set of several hundred.
    "dynamic": {
        "system_tokens": [1000, 4000],
        "new_tokens": [32, 128],
        "output_tokens": [8, 8],
        "history_growth": 0.5,
    },
    "static": {
        "system_tokens": [1000, 4000],
        "new_tokens": [32, 128],
        "output_tokens": [8, 8],
        "pipeline_len": [4, 5],
        "num_apps": 2,
    },
}


BLOCK_SIZE = 128  # tokens per KV block (SessionSpec.block_size; vLLM's CPU backend default)


def knobs(kind: str, overrides: list[str]) -> dict[str, Any]:
    from pbkv.bench.workload import parse_knob
    from pbkv.training.synth import make_config

    knobs = dict(DEFAULT_KNOBS[kind])
    knobs.update(parse_knob(text) for text in overrides)
    try:
        make_config(kind, 0, 1, **knobs)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--synth ({kind}): {exc}") from None
    return knobs


def cache_bytes(blocks: int, block_bytes: int) -> int:
    """vLLM's ``kv_cache_memory_bytes`` for ``blocks`` usable blocks (+1: the null block)."""
    return (blocks + 1) * block_bytes


def make_model(out: Path, train_steps: int = 0) -> str:
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    print(f"making the tiny model ({train_steps} training steps) ...", flush=True)
    return str(make_tiny(out, TinyModelConfig(), train_steps=train_steps))


def run_in_process(
    spec: Any, tmp: Path, timeout_s: float, module: str = "pbkv.bench.vllm_session"
) -> Any:
    """Run a session in a fresh Python process (own process group, killed on timeout):
    ``python -m MODULE SPEC.json OUT.json`` with ``spec`` (a dict, or ``spec.to_dict()``)."""
    spec_path = tmp / f"spec-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec if isinstance(spec, dict) else spec.to_dict()))
    env = dict(
        os.environ, VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    )
    cmd = [sys.executable, "-m", module, str(spec_path), str(out_path)]
    proc = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise RuntimeError(f"engine process exceeded {timeout_s} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"engine process failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out_path.read_text())


def overhead_phase(
    args: argparse.Namespace,
    workloads: tuple,
    common: dict[str, Any],
    block_bytes: int,
    tmp: Path,
    bar: Any,
) -> tuple[list, dict, dict]:
    """A KV cache that holds everything. Each round: stock vLLM in one process, and in another
    the connector on a null link (``lru``: vLLM's connector machinery, no pbkv) alternating
    with pbkv (connector + in-process manager); ``--overhead-inner`` replays of each per
    process. Ratios pair replay i of a round across the processes (vs stock) and within the
    process (vs lru)."""
    from pbkv.bench.vllm_report import strip_rows, summarise
    from pbkv.bench.vllm_session import SessionRun, SessionSpec

    dyn = tuple(w for w in workloads if w.name == "dynamic")
    big = cache_bytes(args.big_kv_blocks, block_bytes)
    inner = {**common, "repeats": args.overhead_inner}
    stock = SessionSpec(
        runs=(SessionRun("stock", "stock"),),
        with_connector=False,
        kv_cache_memory_bytes=big,
        workloads=dyn,
        **inner,
    )
    over: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        pair = (SessionRun("lru", "lru"), SessionRun("pbkv", "pbkv"))
        pbkv = SessionSpec(
            runs=pair if repeat % 2 == 0 else pair[::-1],
            kv_cache_memory_bytes=big,
            workloads=dyn,
            **inner,
        )
        for spec in (stock, pbkv) if repeat % 2 == 0 else (pbkv, stock):
            for row in run_in_process(spec, tmp, args.timeout_s):
                over.append({**row, "repeat": repeat * args.overhead_inner + row["repeat"]})
            bar.advance()
        print(f"      round {repeat + 1}/{args.repeats} done", flush=True)
    return (strip_rows(over), summarise(over, baseline="stock"), summarise(over, baseline="lru"))
