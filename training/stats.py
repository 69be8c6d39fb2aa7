"""Summary statistics of trace files: agents, steps, transitions, how dynamic, tokens.

"How dynamic" is measured per app as conditional entropy (bits) of the next agent:

    H(next)               no context
    H(next | prev)        given the agent that just ran        (a Markov-1 predictor's floor)
    H(next | prev, prev2) given the last two agents

over each workflow's agent sequence padded as ``<start> a1 ... an <end>`` (so "the workflow
ends here" is one of the outcomes). A fixed pipeline has H(next | prev) = 0; the larger it
is, the more a predictor needs live context beyond the last agent. Entropies are plug-in
estimates from the counts (no smoothing).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pbkv.trace import Workflow

START = "<start>"
END = "<end>"


@dataclass(frozen=True, slots=True)
class Summary:
    """min / median / mean / max of a list of numbers."""

    count: int
    minimum: float
    median: float
    mean: float
    maximum: float
    total: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return cls(
            len(values),
            float(min(values)),
            float(statistics.median(values)),
            float(statistics.fmean(values)),
            float(max(values)),
            float(sum(values)),
        )

    def __str__(self) -> str:
        return (
            f"min {self.minimum:g}, median {self.median:g}, mean {self.mean:.1f}, "
            f"max {self.maximum:g}"
        )


@dataclass(frozen=True, slots=True)
class AppStats:
    app: str
    workflows: int
    steps: int
    agent_steps: tuple[tuple[str, int], ...]  # most frequent first
    transitions: tuple[tuple[str, str, int], ...]  # (prev, next, count), START/END included
    entropy_next_bits: float
    entropy_given_prev_bits: float
    entropy_given_prev2_bits: float
    steps_per_workflow: Summary
    input_tokens_per_step: Summary
    output_tokens_per_step: Summary
    prompt_tokens_by_kind: tuple[tuple[str, int], ...]  # segment kind -> total tokens
    phases: tuple[tuple[str, int], ...]
    parallel_steps: int
    # shares of prompt tokens (``pbkv.training.reuse``); None unless asked for (``reuse=True``)
    prefix_reuse_share: float | None = None
    nonprefix_reuse_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            out[name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Summary):
        return {k: getattr(value, k) for k in Summary.__slots__}  # type: ignore[attr-defined]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def conditional_entropy(pairs: Counter[tuple[Any, str]]) -> float:
    """H(Y | X) in bits from counts of (x, y) pairs."""
    by_context: dict[Any, Counter[str]] = defaultdict(Counter)
    for (context, outcome), n in pairs.items():
        by_context[context][outcome] += n
    total = sum(pairs.values())
    if not total:
        return 0.0
    h = 0.0
    for outcomes in by_context.values():
        n_ctx = sum(outcomes.values())
        for n in outcomes.values():
            h -= (n / total) * math.log2(n / n_ctx)
    return max(h, 0.0)


def app_stats(app: str, workflows: Sequence[Workflow], reuse: bool = False) -> AppStats:
    """``reuse``: also measure the perfect-prefix and non-prefix reuse shares of the prompts
    (materialises every prompt: seconds per million prompt tokens)."""
    agents: Counter[str] = Counter()
    trans: Counter[tuple[str, str]] = Counter()
    ctx0: Counter[tuple[Any, str]] = Counter()
    ctx2: Counter[tuple[Any, str]] = Counter()
    kinds: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    in_tokens: list[float] = []
    out_tokens: list[float] = []
    parallel = 0
    for wf in workflows:
        seq = [START, *wf.agents, END]
        for i in range(1, len(seq)):
            trans[(seq[i - 1], seq[i])] += 1
            ctx0[((), seq[i])] += 1
            ctx2[((seq[i - 2] if i >= 2 else START, seq[i - 1]), seq[i])] += 1
        for step in wf.steps:
            agents[step.agent] += 1
            in_tokens.append(step.input_tokens)
            out_tokens.append(step.output_tokens)
            parallel += step.parallel_group is not None
            if step.phase:
                phases[step.phase] += 1
            for seg in step.prompt:
                kinds[seg.kind] += seg.tokens
    return AppStats(
        app=app,
        workflows=len(workflows),
        steps=sum(agents.values()),
        agent_steps=tuple(agents.most_common()),
        transitions=tuple((a, b, n) for (a, b), n in sorted(trans.items(), key=_by_count)),
        entropy_next_bits=conditional_entropy(ctx0),
        entropy_given_prev_bits=conditional_entropy(trans),
        entropy_given_prev2_bits=conditional_entropy(ctx2),
        steps_per_workflow=Summary.of([len(w.steps) for w in workflows]),
        input_tokens_per_step=Summary.of(in_tokens),
        output_tokens_per_step=Summary.of(out_tokens),
        prompt_tokens_by_kind=tuple(kinds.most_common()),
        phases=tuple(phases.most_common()),
        parallel_steps=parallel,
        **(_reuse(workflows) if reuse else {}),
    )


def _reuse(workflows: Sequence[Workflow]) -> dict[str, float]:
    from pbkv.training.reuse import measure_reuse, trace_token_runs

    measured = measure_reuse(trace_token_runs(workflows))
    return {
        "prefix_reuse_share": measured.prefix_share,
        "nonprefix_reuse_share": measured.nonprefix_share,
    }


def _by_count(item: tuple[tuple[str, str], int]) -> tuple[int, str, str]:
    (a, b), n = item
    return (-n, a, b)


def trace_stats(workflows: Iterable[Workflow], reuse: bool = False) -> list[AppStats]:
    """One ``AppStats`` per app, apps in name order (``reuse``: see ``app_stats``)."""
    by_app: dict[str, list[Workflow]] = defaultdict(list)
    for wf in workflows:
        by_app[wf.app].append(wf)
    return [app_stats(app, wfs, reuse) for app, wfs in sorted(by_app.items())]


def format_app_stats(stats: AppStats, *, max_table_agents: int = 8) -> str:
    """Human-readable report for one app (the transition table folds rare agents)."""
    lines = [
        f"app {stats.app}: {stats.workflows} workflows, {stats.steps} steps, "
        f"{len(stats.agent_steps)} agents",
        f"  steps/workflow: {stats.steps_per_workflow}",
        f"  next-agent entropy (bits): H(next) {stats.entropy_next_bits:.2f}, "
        f"H(next|prev) {stats.entropy_given_prev_bits:.2f}, "
        f"H(next|prev,prev2) {stats.entropy_given_prev2_bits:.2f}",
        f"  input tokens/step: {stats.input_tokens_per_step}",
        f"  output tokens/step: {stats.output_tokens_per_step}",
        "  prompt tokens by segment kind: "
        + ", ".join(
            f"{k} {_share(n, stats.input_tokens_per_step.total)}"
            for k, n in stats.prompt_tokens_by_kind
        ),
        "  agents (steps): " + ", ".join(f"{a} {n}" for a, n in stats.agent_steps),
    ]
    if stats.prefix_reuse_share is not None and stats.nonprefix_reuse_share is not None:
        lines.append(
            f"  prompt reuse: perfect prefix cache {stats.prefix_reuse_share:.1%}, "
            f"recurring past the prefix (non-prefix) "
            f"{stats.nonprefix_reuse_share:.1%} of prompt tokens"
        )
    if stats.phases:
        lines.append("  phases (steps): " + ", ".join(f"{p} {n}" for p, n in stats.phases))
    if stats.parallel_steps:
        lines.append(f"  steps in parallel groups: {stats.parallel_steps}")
    lines.append("  transitions (row: previous agent, column: next agent; counts):")
    lines.extend("  " + row for row in _table(stats, max_table_agents))
    return "\n".join(lines)


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def _table(stats: AppStats, max_agents: int) -> list[str]:
    top = [a for a, _ in stats.agent_steps[:max_agents]]
    other = "(other)" if len(stats.agent_steps) > max_agents else None

    def fold(agent: str) -> str:
        return agent if agent in top or agent in (START, END) else "(other)"

    counts: Counter[tuple[str, str]] = Counter()
    for a, b, n in stats.transitions:
        counts[(fold(a), fold(b))] += n
    rows = [START, *top, *([other] if other else [])]
    cols = [*top, *([other] if other else []), END]
    width = max(8, *(min(len(c), 14) for c in cols))
    head_w = max(len(r) for r in rows)
    out = [" " * head_w + " " + " ".join(c[:14].rjust(width) for c in cols)]
    for r in rows:
        out.append(
            r.ljust(head_w)
            + " "
            + " ".join(str(counts.get((r, c), 0) or ".").rjust(width) for c in cols)
        )
    return out
