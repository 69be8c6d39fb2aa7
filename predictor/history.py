"""History statistics per app: agent frequencies, variable-order Markov counts with Dirichlet
back-off, a recency-rank model, the first observed run (static graph) and fan-out sizes.

Everything is counts, so it updates online from a finished workflow (``add_rounds``) and
serialises to plain JSON. Targets of a fan-out round count ``1 / len(round)`` each.

Back-off (hierarchical Dirichlet smoothing), for a context of length k::

    p_k(a) = (c_k(ctx, a) + beta * p_{k-1}(a)) / (C_k(ctx) + beta)
    p_0(a) = (c(a) + alpha) / (C + alpha * N)          # app frequency prior, N candidates
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbkv.predictor.examples import round_token

MAX_RANK = 8  # recency ranks beyond this share one bucket
NEW = "<new>"  # recency bucket of an agent not yet called in this workflow


def _counter() -> defaultdict[str, float]:
    return defaultdict(float)


@dataclass(slots=True)
class AppHistory:
    agent_counts: dict[str, float] = field(default_factory=_counter)
    # context (tuple of round tokens, most recent last) -> next agent -> weight
    context_counts: dict[tuple[str, ...], dict[str, float]] = field(
        default_factory=lambda: defaultdict(_counter)
    )
    rank_counts: dict[str, float] = field(default_factory=_counter)
    # last round token ("" at the start) -> [rounds that followed it, agents they called]
    next_sizes: dict[str, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0.0, 0.0])
    )
    first_run: list[tuple[str, ...]] | None = None
    num_workflows: int = 0
    num_rounds: int = 0
    num_calls: int = 0

    @property
    def mean_round_size(self) -> float:
        """Mean number of agents called per round (1.0 for sequential apps)."""
        return self.num_calls / self.num_rounds if self.num_rounds else 1.0


def recency_ranks(rounds: list[tuple[str, ...]]) -> dict[str, int]:
    """agent -> rounds since it last ran (1 = the last round)."""
    ranks: dict[str, int] = {}
    for back, agents in enumerate(reversed(rounds), start=1):
        for a in agents:
            ranks.setdefault(a, back)
    return ranks


def rank_key(rank: int | None) -> str:
    return NEW if rank is None else str(min(rank, MAX_RANK))


class HistoryStats:
    """Per-app history counts; the history experts and baselines read them."""

    def __init__(self, max_order: int = 3, alpha: float = 0.5, beta: float = 2.0) -> None:
        if max_order < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got {alpha}, {beta}")
        self.max_order, self.alpha, self.beta = max_order, alpha, beta
        self.apps: dict[str, AppHistory] = {}
        self._known_cache: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        self._versions: dict[str, int] = {}  # app -> add_rounds calls so far

    def version(self, app: str) -> int:
        """Changes whenever ``app``'s counts change (what caches of derived values key on)."""
        return self._versions.get(app, 0)

    # ---- learning -------------------------------------------------------------------------
    def add_rounds(self, app: str, rounds: list[tuple[str, ...]]) -> None:
        h = self.apps.setdefault(app, AppHistory())
        self._known_cache.pop(app, None)
        self._versions[app] = self._versions.get(app, 0) + 1
        if h.first_run is None:
            h.first_run = list(rounds)
        h.num_workflows += 1
        tokens = [round_token(r) for r in rounds]
        ranks: dict[str, int] = {}
        for i, agents in enumerate(rounds):
            w = 1.0 / len(agents)
            h.num_rounds += 1
            h.num_calls += len(agents)
            size = h.next_sizes[tokens[i - 1] if i else ""]
            size[0] += 1
            size[1] += len(agents)
            for a in agents:
                h.agent_counts[a] += w
                h.rank_counts[rank_key(ranks.get(a))] += w
                for k in range(1, min(self.max_order, i) + 1):
                    h.context_counts[tuple(tokens[i - k : i])][a] += w
            ranks = {a: r + 1 for a, r in ranks.items()}
            ranks.update(dict.fromkeys(agents, 1))

    # ---- reading --------------------------------------------------------------------------
    def known_agents(self, app: str) -> tuple[str, ...]:
        return self._known(app)[0]

    def _known(self, app: str) -> tuple[tuple[str, ...], frozenset[str]]:
        known = self._known_cache.get(app)
        if known is None:
            h = self.apps.get(app)
            agents = tuple(sorted(h.agent_counts)) if h else ()
            known = self._known_cache[app] = (agents, frozenset(agents))
        return known

    def candidates(self, app: str, rounds: list[tuple[str, ...]]) -> tuple[str, ...]:
        """The app's known agents, then agents seen only in this workflow (never trained)."""
        return self.candidates_of(app, (a for r in rounds for a in r))

    def candidates_of(self, app: str, agents: Iterable[str]) -> tuple[str, ...]:
        """``candidates`` given the workflow's agents (``WorkflowState.agents()``)."""
        known, known_set = self._known(app)
        extra = {a for a in agents if a not in known_set}
        return known + tuple(sorted(extra)) if extra else known

    def frequency(self, app: str, candidates: tuple[str, ...]) -> np.ndarray:
        h = self.apps.get(app)
        counts = np.array([h.agent_counts.get(a, 0.0) if h else 0.0 for a in candidates])
        p = counts + self.alpha
        return p / p.sum()

    def markov(
        self,
        app: str,
        rounds: list[tuple[str, ...]],
        candidates: tuple[str, ...],
        max_order: int | None = None,
    ) -> np.ndarray:
        p = self.frequency(app, candidates)
        h = self.apps.get(app)
        if h is None:
            return p
        tokens = [round_token(r) for r in rounds[-self.max_order :]]
        order = min(max_order or self.max_order, self.max_order, len(tokens))
        index = {a: i for i, a in enumerate(candidates)}
        for k in range(1, order + 1):
            counts = h.context_counts.get(tuple(tokens[-k:]))
            if not counts:
                break  # longer contexts are unseen too
            c = np.zeros(len(candidates))
            for a, w in counts.items():
                c[index[a]] += w
            p = (c + self.beta * p) / (c.sum() + self.beta)
        return p

    def recency(
        self, app: str, rounds: list[tuple[str, ...]], candidates: tuple[str, ...]
    ) -> np.ndarray:
        """P(next agent) from how long ago each candidate ran; agents not yet called in this
        workflow share the ``<new>`` mass by the frequency prior. Generalises to agent names
        never seen in training (teams built per task)."""
        h = self.apps.get(app)
        ranks = recency_ranks(rounds)
        keys = [rank_key(ranks.get(a)) for a in candidates]
        rank_w = h.rank_counts if h else {}
        prior = self.frequency(app, candidates)
        new_mask = np.array([k == NEW for k in keys])
        num_by_key: dict[str, int] = defaultdict(int)
        for k in keys:
            num_by_key[k] += 1
        total = sum(rank_w.values()) + self.alpha * (MAX_RANK + 1)
        p = np.empty(len(candidates))
        for i, k in enumerate(keys):
            if k != NEW:
                p[i] = (rank_w.get(k, 0.0) + self.alpha) / total / num_by_key[k]
        if new_mask.any():
            p_new = (rank_w.get(NEW, 0.0) + self.alpha) / total
            p[new_mask] = p_new * prior[new_mask] / prior[new_mask].sum()
        return p / p.sum()

    def transition(self, app: str, candidates: tuple[str, ...]) -> np.ndarray:
        """First-order transition matrix over ``candidates`` (rows sum to 1), for rollouts.
        Row ``a`` pools the order-1 contexts of every round ``a`` took part in (a fan-out
        round token ``X+Y`` feeds both rows X and Y)."""
        prior = self.frequency(app, candidates)
        h = self.apps.get(app)
        index = {a: i for i, a in enumerate(candidates)}
        counts = np.zeros((len(candidates), len(candidates)))
        if h is not None:
            for ctx, nxt in h.context_counts.items():
                if len(ctx) != 1:
                    continue
                rows = [index[a] for a in ctx[0].split("+") if a in index]
                for a, w in nxt.items():
                    counts[rows, index[a]] += w
        t = counts + self.beta * prior[None, :]
        return t / t.sum(axis=1, keepdims=True)

    def fanout(self, app: str) -> float:
        h = self.apps.get(app)
        return h.mean_round_size if h else 1.0

    def next_size(self, app: str, rounds: list[tuple[str, ...]]) -> float:
        """Expected number of agents the next round calls, given the last round."""
        h = self.apps.get(app)
        if h is None:
            return 1.0
        size = h.next_sizes.get(round_token(rounds[-1]) if rounds else "")
        return size[1] / size[0] if size else h.mean_round_size

    # ---- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        apps = {}
        for app, h in self.apps.items():
            apps[app] = {
                "agent_counts": dict(h.agent_counts),
                "context_counts": [[list(ctx), dict(c)] for ctx, c in h.context_counts.items()],
                "rank_counts": dict(h.rank_counts),
                "next_sizes": dict(h.next_sizes),
                "first_run": [list(r) for r in h.first_run] if h.first_run else None,
                "num_workflows": h.num_workflows,
                "num_rounds": h.num_rounds,
                "num_calls": h.num_calls,
            }
        return {"max_order": self.max_order, "alpha": self.alpha, "beta": self.beta, "apps": apps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HistoryStats:
        stats = cls(data["max_order"], data["alpha"], data["beta"])
        for app, d in data["apps"].items():
            h = AppHistory()
            h.agent_counts.update(d["agent_counts"])
            for ctx, c in d["context_counts"]:
                h.context_counts[tuple(ctx)].update(c)
            h.rank_counts.update(d["rank_counts"])
            h.next_sizes.update(d["next_sizes"])
            h.first_run = [tuple(r) for r in d["first_run"]] if d["first_run"] else None
            h.num_workflows, h.num_rounds = d["num_workflows"], d["num_rounds"]
            h.num_calls = d["num_calls"]
            stats.apps[app] = h
        return stats
