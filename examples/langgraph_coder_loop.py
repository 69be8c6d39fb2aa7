"""A LangGraph multi-agent graph on an OpenAI-compatible server (``vllm serve``), reported to
pbkv: planner -> coder <-> reviewer, a router sends the code back to the coder until the
reviewer approves or ``--max-rounds`` coder/reviewer rounds have run.

    pbkv model make-tiny --out tiny --tokenizer
    python -m vllm.entrypoints.openai.api_server --model tiny --served-model-name tiny \\
        --port 8000 --enforce-eager --max-model-len 2048 &       # `vllm serve tiny ...`
    pbkv serve &
    python examples/langgraph_coder_loop.py --base-url http://127.0.0.1:8000/v1 --model tiny

Each LLM request carries ``vllm_xargs`` {pbkv_workflow_id, pbkv_agent, pbkv_tenant}; pbkv
gets the workflow's start, each agent step (name, output text, timing) and its end. The
graph never waits on pbkv: with pbkv down it runs the same calls, without forecasts.
"""

from __future__ import annotations

import argparse
import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from pbkv.engine_adapter.integrations.langgraph import PbkvChatOpenAI, PbkvLangGraph
from pbkv.engine_adapter.integrations.reporter import ReporterConfig, WorkflowReporter

MAX_ROUNDS_CAP = 20  # the loop is bounded whatever --max-rounds says


class CodingState(TypedDict):
    task: str
    plan: str
    code: str
    review: str
    rounds: int
    agents: Annotated[list[str], operator.add]  # who spoke, in order


def build_graph(llm, max_rounds: int = 2):
    """planner -> coder -> reviewer -> (coder | END)."""
    if not 1 <= max_rounds <= MAX_ROUNDS_CAP:
        raise ValueError(f"max_rounds must be in [1, {MAX_ROUNDS_CAP}], got {max_rounds}")

    def planner(state: CodingState) -> dict:
        plan = llm.invoke(f"Plan the steps for: {state['task']}").content
        return {"plan": plan, "agents": ["planner"]}

    def coder(state: CodingState) -> dict:
        prompt = f"Task: {state['task']}\nPlan: {state['plan']}\nReview: {state['review']}"
        code = llm.invoke(f"{prompt}\nWrite the code.").content
        return {"code": code, "rounds": state["rounds"] + 1, "agents": ["coder"]}

    def reviewer(state: CodingState) -> dict:
        review = llm.invoke(f"Review this code; say APPROVED if it is done:\n{state['code']}")
        return {"review": review.content, "agents": ["reviewer"]}

    def route(state: CodingState) -> str:
        done = "APPROVED" in state["review"] or state["rounds"] >= max_rounds
        return END if done else "coder"

    builder = StateGraph(CodingState)
    builder.add_node("planner", planner)
    builder.add_node("coder", coder)
    builder.add_node("reviewer", reviewer)
    builder.add_edge(START, "planner")
    builder.add_edge("planner", "coder")
    builder.add_edge("coder", "reviewer")
    builder.add_conditional_edges("reviewer", route, ["coder", END])
    return builder.compile()


def initial_state(task: str) -> CodingState:
    return {"task": task, "plan": "", "code": "", "review": "", "rounds": 0, "agents": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbkv", default="127.0.0.1:50151", help="pbkv serve gRPC target")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI API URL")
    parser.add_argument("--model", default="tiny", help="served model name")
    parser.add_argument("--workflows", type=int, default=2, help="graph runs")
    parser.add_argument("--max-rounds", type=int, default=2, help="coder/reviewer rounds")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per LLM call")
    args = parser.parse_args()
    if not 1 <= args.workflows <= 1000:
        parser.error(f"--workflows must be in [1, 1000], got {args.workflows}")
    if not 1 <= args.max_rounds <= MAX_ROUNDS_CAP:
        parser.error(f"--max-rounds must be in [1, {MAX_ROUNDS_CAP}], got {args.max_rounds}")
    llm = PbkvChatOpenAI(
        base_url=args.base_url, api_key="unused", model=args.model, max_tokens=args.max_tokens
    )
    graph = build_graph(llm, args.max_rounds)
    with WorkflowReporter(ReporterConfig(target=args.pbkv)) as reporter:
        pbkv = PbkvLangGraph(reporter, app="coder-loop")
        for i in range(args.workflows):
            wid = f"coder-loop-{i}"
            final = graph.invoke(initial_state("a snake game"), pbkv.config(wid, task="snake"))
            reporter.flush(timeout_s=2.0)  # only so that the forecast below is current
            print(f"{wid}: {' '.join(final['agents'])}; next: {reporter.latest_forecast(wid)}")
        reporter.flush()
        stats = reporter.stats()
    print(
        f"pbkv reporter: sent {stats.sent}, failed {stats.failed}, "
        f"dropped {stats.dropped_full + stats.dropped_down}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
