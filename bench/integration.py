"""``pbkv bench integration``: what the LangGraph integration adds to each LLM call at the
orchestrator, side by side with no integration.

Per call it times LangChain's own per-call path short of the network: the callback manager's
``on_chat_model_start``, the request body (``_get_request_payload``) and ``on_llm_end``, run
inside a node's runnable config, for three candidates, interleaved in rounds so that machine
noise falls on all three alike:

    none            ChatOpenAI, no pbkv callback handler
    tags            PbkvChatOpenAI (the vllm_xargs tags), no handler
    tags+reporting  PbkvChatOpenAI and PbkvCallbackHandler (StepStarted/StepFinished enqueued
                    for a WorkflowReporter whose sender talks to a live ``pbkv serve``)

Two runs: back to back (``--calls``: the worst case, the reporter's sender thread always busy
and competing for the GIL) and paced (``--paced-calls``, one call every ``--pace-ms``, the
sleep outside the timing: an orchestrator waits for the LLM between calls, and the sender
catches up meanwhile).

    pbkv bench integration                  # starts its own pbkv serve
    pbkv bench integration --target 127.0.0.1:50151 --calls 50000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pbkv.bench.planner import _pct
from pbkv.bench.service_process import default_model, start_service

CANDIDATES = ("none", "tags", "tags+reporting")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per candidate")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--paced-calls", type=int, default=2_000, help="... in the paced run")
    parser.add_argument("--pace-ms", type=float, default=2.0, help="one call every this often")
    parser.add_argument("--prompt-bytes", type=int, default=2_000, help="prompt text size")
    parser.add_argument("--target", default=None, help="a running pbkv serve (else one is started)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out/integration"),
        help="folder for integration.json",
    )


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError

    if not 1 <= args.rounds <= min(args.calls, args.paced_calls):
        raise CliError("--rounds must be in [1, min(--calls, --paced-calls)]")
    if args.prompt_bytes < 1 or not 0 < args.pace_ms <= 1000:
        raise CliError("--prompt-bytes must be >= 1 and --pace-ms in (0, 1000]")
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = None, args.target
        if target is None:
            proc, target = start_service(Path(tmp), default_model(Path(tmp)), [])
        try:
            result = {
                "back_to_back": measure(target, args.calls, args.rounds, args.prompt_bytes),
                "paced": measure(
                    target, args.paced_calls, args.rounds, args.prompt_bytes, args.pace_ms / 1e3
                ),
            }
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    result["load_average_start_end"] = [load_start[0], os.getloadavg()[0]]
    result["cpu_count"] = os.cpu_count()
    _print(result)
    (args.out / "integration.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'integration.json'}")
    return 0


def measure(
    target: str, calls: int, rounds: int, prompt_bytes: int, pace_s: float = 0.0
) -> dict[str, Any]:
    from langchain_core.callbacks import CallbackManager
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_core.outputs import ChatGeneration, LLMResult
    from langchain_core.runnables.config import var_child_runnable_config
    from langchain_openai import ChatOpenAI

    from pbkv.engine_adapter.integrations.langgraph import PbkvChatOpenAI, PbkvLangGraph
    from pbkv.engine_adapter.integrations.reporter import ReporterConfig, WorkflowReporter

    common = dict(base_url="http://127.0.0.1:9/v1", api_key="unused", model="tiny", max_tokens=8)
    plain, tagged = ChatOpenAI(**common), PbkvChatOpenAI(**common)
    messages = [SystemMessage("You review code."), HumanMessage("x" * prompt_bytes)]
    usage = {"input_tokens": 500, "output_tokens": 8, "total_tokens": 508}
    result = LLMResult(
        generations=[[ChatGeneration(message=AIMessage("w1 w2 w3", usage_metadata=usage))]]
    )
    node = {"langgraph_node": "reviewer", "langgraph_step": 3, "thread_id": None}
    reporter = WorkflowReporter(ReporterConfig(target=target))
    pbkv = PbkvLangGraph(reporter, app="bench")
    wid = f"bench-{uuid.uuid4().hex[:8]}"
    config = pbkv.config(wid)
    reporter.start_workflow(wid, "bench")
    setups = {
        "none": (plain, [], {**node, "thread_id": wid}),
        "tags": (tagged, [], {**node, **config["metadata"]}),
        "tags+reporting": (tagged, [pbkv.handler], {**node, **config["metadata"]}),
    }
    serialized = plain._get_serialized() if hasattr(plain, "_get_serialized") else {}

    def one_call(model, handlers, metadata) -> int:
        t0 = time.perf_counter_ns()
        manager = CallbackManager.configure(handlers, inheritable_metadata=metadata)
        (run,) = manager.on_chat_model_start(serialized, [messages], run_id=uuid.uuid4())
        model._get_request_payload(messages)
        run.on_llm_end(result)
        elapsed = time.perf_counter_ns() - t0
        if pace_s:
            time.sleep(max(0.0, pace_s - elapsed / 1e9))
        return elapsed

    times_ns: dict[str, list[int]] = {name: [] for name in CANDIDATES}
    per_round = calls // rounds
    for _ in range(rounds):
        for name in CANDIDATES:
            model, handlers, metadata = setups[name]
            token = var_child_runnable_config.set({"metadata": metadata})
            try:
                times_ns[name] += [one_call(model, handlers, metadata) for _ in range(per_round)]
            finally:
                var_child_runnable_config.reset(token)
    reporter.end_workflow(wid)
    flushed = reporter.flush(timeout_s=120)
    stats = reporter.stats()
    reporter.close()
    out: dict[str, Any] = {
        "calls_per_candidate": per_round * rounds,
        "rounds": rounds,
        "pace_ms": pace_s * 1e3,
    }
    for name, values in times_ns.items():
        us = [v / 1e3 for v in values]
        out[name] = {"median_us": statistics.median(us), "p99_us": _pct(us, 99)}
    for name in CANDIDATES[1:]:
        out[name]["median_ratio"] = out[name]["median_us"] / out["none"]["median_us"]
        out[name]["added_median_us"] = out[name]["median_us"] - out["none"]["median_us"]
        out[name]["added_p99_us"] = out[name]["p99_us"] - out["none"]["p99_us"]
    out["reporter"] = {
        "flushed": flushed,
        "sent": stats.sent,
        "failed": stats.failed,
        "dropped_full": stats.dropped_full,
        "dropped_down": stats.dropped_down,
    }
    return out


def _print(result: dict[str, Any]) -> None:
    load = result["load_average_start_end"]
    print(f"load average {load[0]:.1f} -> {load[1]:.1f} on {result['cpu_count']} CPUs")
    for mode in ("back_to_back", "paced"):
        _print_run(mode, result[mode])


def _print_run(mode: str, r: dict[str, Any]) -> None:
    pace = f", one call every {r['pace_ms']:g} ms" if r["pace_ms"] else ""
    print(
        f"{mode}: {r['calls_per_candidate']:,} calls per candidate in {r['rounds']} "
        f"interleaved rounds{pace}"
    )
    for name in CANDIDATES:
        c = r[name]
        extra = (
            f"  x{c['median_ratio']:.2f}  added: median {c['added_median_us']:+.1f} us, "
            f"p99 {c['added_p99_us']:+.1f} us"
            if name != "none"
            else ""
        )
        print(f"  {name:15s} median {c['median_us']:8.1f} us  p99 {c['p99_us']:8.1f} us{extra}")
    rep = r["reporter"]
    print(
        f"  reporter: sent {rep['sent']:,}, failed {rep['failed']}, dropped "
        f"{rep['dropped_full'] + rep['dropped_down']:,} (queue full or pbkv away)"
    )
