"""Replay a real ChatDev run as live orchestrator calls.

The run is the first workflow of pbkv's bundled ChatDev sample (``training/samples``, real
ChatDev logs imported), or the ChatDev ``.log`` file given with ``--log`` (for instance one
from the shared datasets, ``../shared/datasets/chatdev_openbmb``, when you have them).

Each turn of the log becomes StepStarted + StepFinished with the agent, phase, the turn's
input and output text and its prompt segments; after each turn the service's forecast of
the next agents is printed next to the agent that actually spoke next.

    pbkv serve --model MODEL_DIR &                     # or: --serve to start one here
    python examples/chatdev_live.py [--log FILE.log] [--target 127.0.0.1:50151] [--serve]
    python examples/chatdev_live.py --serve --model MODEL_DIR   # no service needed

With ``--serve`` the example starts an in-process service (temporary SQLite store) and, when
``--model`` is given, loads that predictor; without a model the service forecasts nothing
and the example says so.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pbkv.service.client import PbkvClient
from pbkv.training.importers.base import ImportOptions
from pbkv.training.importers.chatdev import import_chatdev
from pbkv.training.samples import sample_paths
from pbkv.training.trace_io import load_workflows


def replay(client: PbkvClient, workflow, max_steps: int) -> tuple[int, int]:
    """Send the workflow's turns; returns (top-1 hits, forecasts judged)."""
    wid = f"live-{workflow.workflow_id}"
    client.start_workflow(wid, workflow.app, task=workflow.task)
    hits = judged = 0
    steps = workflow.steps[:max_steps]
    for i, step in enumerate(steps):
        client.step_started(wid, step.agent, parallel_group=step.parallel_group)
        forecast = client.step_finished(
            wid,
            step.agent,
            step_index=i,
            output_text=step.output_text or "",
            context_text=step.input_text or "",
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            phase=step.phase,
            prompt=[(s.id, s.tokens) for s in step.prompt],
        )
        actual = steps[i + 1].agent if i + 1 < len(steps) else None
        if forecast is None:
            print(f"{i:3d} {step.agent:<24} (no forecast: the service has no model)")
            continue
        top = sorted(forecast.agents, key=lambda a: -a.p_next)[:3]
        guess = ", ".join(f"{a.agent} {a.p_next:.2f}" for a in top)
        mark = ""
        if actual is not None:
            judged += 1
            hits += top[0].agent == actual if top else 0
            mark = "ok" if top and top[0].agent == actual else f"(next: {actual})"
        print(f"{i:3d} {step.agent:<24} -> {guess}  {mark}")
    client.end_workflow(wid)
    return hits, judged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log", type=Path, help="a ChatDev .log (default: the bundled sample's first run)"
    )
    parser.add_argument("--target", default="127.0.0.1:50151", help="service gRPC target")
    parser.add_argument("--serve", action="store_true", help="start an in-process service")
    parser.add_argument("--model", type=Path, help="predictor for --serve")
    parser.add_argument("--max-steps", type=int, default=40, help="turns replayed")
    args = parser.parse_args()
    if args.log is not None:
        [workflow] = import_chatdev(args.log, ImportOptions(max_text_chars=2_000)).workflows
        source = args.log.name
    else:
        sample = sample_paths()["chatdev"]
        workflow = load_workflows(sample)[0]
        source = f"{sample.name} {workflow.workflow_id}"
    print(f"{source}: {len(workflow.steps)} turns, task: {workflow.task[:70]!r}")
    if not args.serve:
        with PbkvClient(args.target, timeout_s=10) as client:
            hits, judged = replay(client, workflow, args.max_steps)
    else:
        from pbkv.service.config import ServiceConfig
        from pbkv.service.server_thread import ServerThread

        with tempfile.TemporaryDirectory() as tmp:
            config = ServiceConfig(
                port=0,
                http_port=None,
                store_path=Path(tmp) / "t.sqlite3",
                model_path=args.model,
                watch_model_s=None,
            )
            with ServerThread(config) as server, PbkvClient(server.target) as client:
                hits, judged = replay(client, workflow, args.max_steps)
    if judged:
        print(f"top-1 next-agent accuracy on this run: {hits}/{judged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
