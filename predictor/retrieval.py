"""History expert ``retrieval``: past workflows of the same app with a similar task text vote
for what came next in them.

Tasks are TF-IDF vectors over hashed words (``dim`` columns, L2-normalised); each app keeps a
bank of at most ``capacity`` past workflows (oldest replaced first, so it also learns online).
A neighbour votes, with weight = cosine similarity, for the round that followed its own
occurrence of our last round nearest our position (or, failing that, its round at our index).
Votes are smoothed with the app's frequency prior.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from pbkv.predictor.examples import round_token
from pbkv.predictor.experts import Expert, StateContext
from pbkv.predictor.history import HistoryStats

_WORD = re.compile(r"[a-z0-9_]+")


@lru_cache(maxsize=4096)  # bounded: 2 KiB per entry
def _task_counts(task: str, dim: int) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    for w in _WORD.findall(task.lower()):
        v[zlib.crc32(w.encode()) % dim] += 1.0
    return np.log1p(v)


@dataclass(slots=True)
class AppBank:
    vectors: np.ndarray  # (n, dim) raw log-counts
    rounds: list[list[tuple[str, ...]]] = field(default_factory=list)
    next_slot: int = 0
    idf: np.ndarray | None = None
    normed: np.ndarray | None = None  # vectors * idf, L2-normalised (rebuilt lazily)


class RetrievalExpert(Expert):
    name = "retrieval"

    def __init__(
        self,
        stats: HistoryStats,
        dim: int = 512,
        capacity: int = 512,
        k: int = 10,
        prior_weight: float = 1.0,
    ) -> None:
        self.stats, self.dim, self.capacity, self.k = stats, dim, capacity, k
        self.prior_weight = prior_weight
        self.banks: dict[str, AppBank] = {}

    def add(self, app: str, task: str, rounds: list[tuple[str, ...]]) -> None:
        bank = self.banks.get(app)
        if bank is None:
            bank = self.banks[app] = AppBank(np.zeros((0, self.dim), np.float32))
        v = _task_counts(task, self.dim)
        if len(bank.rounds) < self.capacity:
            bank.vectors = np.vstack([bank.vectors, v[None, :]])
            bank.rounds.append(list(rounds))
        else:
            bank.vectors[bank.next_slot] = v
            bank.rounds[bank.next_slot] = list(rounds)
            bank.next_slot = (bank.next_slot + 1) % self.capacity
        bank.normed = None

    def _normed(self, bank: AppBank) -> np.ndarray:
        if bank.normed is None:
            df = (bank.vectors > 0).sum(axis=0)
            bank.idf = np.log((1 + len(bank.rounds)) / (1 + df)).astype(np.float32) + 1.0
            m = bank.vectors * bank.idf
            bank.normed = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-9)
        return bank.normed

    def probs(self, ctx: StateContext) -> np.ndarray:
        prior = self.stats.frequency(ctx.state.app, ctx.candidates)
        bank = self.banks.get(ctx.state.app)
        if bank is None or not bank.rounds:
            return prior
        normed = self._normed(bank)
        q = _task_counts(ctx.state.task, self.dim) * bank.idf
        norm = float(np.linalg.norm(q))
        if norm == 0.0:
            return prior
        sims = normed @ (q / norm)
        k = min(self.k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        index = {a: i for i, a in enumerate(ctx.candidates)}
        votes = np.zeros(len(ctx.candidates))
        t = len(ctx.rounds)
        last = round_token(ctx.rounds[-1]) if ctx.rounds else None
        for j in top:
            sim = float(sims[j])
            if sim <= 0.0:
                continue
            nxt = _continuation(bank.rounds[j], last, t)
            for a in nxt or ():
                if a in index:
                    votes[index[a]] += sim / len(nxt)
        p = votes + self.prior_weight * prior
        return p / p.sum()

    # ---- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "dim": self.dim,
            "capacity": self.capacity,
            "k": self.k,
            "prior_weight": self.prior_weight,
            "banks": {
                app: {
                    "next_slot": b.next_slot,
                    "rounds": [[list(r) for r in rr] for rr in b.rounds],
                }
                for app, b in self.banks.items()
            },
        }

    def vectors(self) -> dict[str, np.ndarray]:
        return {app: b.vectors for app, b in self.banks.items()}

    @classmethod
    def from_json(
        cls, stats: HistoryStats, data: dict, vectors: dict[str, np.ndarray]
    ) -> RetrievalExpert:
        expert = cls(stats, data["dim"], data["capacity"], data["k"], data["prior_weight"])
        for app, b in data["banks"].items():
            expert.banks[app] = AppBank(
                vectors[app].astype(np.float32),
                [[tuple(r) for r in rr] for rr in b["rounds"]],
                b["next_slot"],
            )
        return expert


def _continuation(
    rounds: list[tuple[str, ...]], last: str | None, t: int
) -> tuple[str, ...] | None:
    if last is not None:
        hits = [i for i, r in enumerate(rounds[:-1]) if round_token(r) == last]
        if hits:
            i = min(hits, key=lambda i: (abs(i - (t - 1)), i))
            return rounds[i + 1]
    return rounds[t] if t < len(rounds) else None
