"""Context expert ``gru``: a small GRU over the agent sequence plus a bag of the hashed state
features, trained with torch, run in numpy at inference (no torch import on the hot path)::

    agents (last L steps) -> embedding -> GRU -> h  --+
                                                      +-> linear -> logits over app/agent
    hashed features -> embedding bag (sum) -> tanh --+

Trained on soft targets (a fan-out round's agents share the mass), Adam, few epochs, on at
most ``gru_max_examples`` examples, single-threaded-deterministic for a seed. The GRU state for
an agent sequence is cached (sequences repeat across workflows), so a forecast usually costs
one bag sum and one output product.

Only training needs torch (the ``gru`` extra: ``pip install 'pbkv[gru]'``); without it,
``fit`` raises ``MissingExtra`` naming the extra. A trained GRU is stored as numpy arrays in
the model's ``weights.npz`` (``to_arrays``), so loading and serving it need no torch. Models
written before that keep a torch ``gru.pt`` (``load_torch_file``), which needs torch to read.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pbkv.errors import require
from pbkv.predictor.examples import Example, round_agents
from pbkv.predictor.experts import Expert, StateContext, softmax
from pbkv.predictor.history import HistoryStats

PAD, UNK = "<pad>", "<unk>"
PARAMS = ("embed", "w_ih", "w_hh", "b_ih", "b_hh", "bag", "bag_b", "out_w", "out_b")
_PREFIX = "gru."  # the GRU's arrays in weights.npz
SEQ_LEN = 8
BAG_BITS = 16
EMBED, HIDDEN, CONTEXT = 16, 32, 24
_CACHE_SIZE = 4096


def _key(app: str, agent: str) -> str:
    return f"{app}\x1f{agent}"


class GruExpert(Expert):
    name = "gru"

    def __init__(self, vocab: list[str], params: dict[str, np.ndarray]) -> None:
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        self.p = params
        # input-side gate pre-activations per token: (V, 3H)
        self._gi = params["embed"] @ params["w_ih"].T + params["b_ih"]
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    def _tokens(self, app: str, agents: list[str]) -> tuple[int, ...]:
        unk = self.index[UNK]
        ids = [self.index.get(_key(app, a), unk) for a in agents[-SEQ_LEN:]]
        return tuple([self.index[PAD]] * (SEQ_LEN - len(ids)) + ids)

    def _hidden(self, tokens: tuple[int, ...]) -> np.ndarray:
        h = self._cache.get(tokens)
        if h is not None:
            self._cache.move_to_end(tokens)
            return h
        p, hsz = self.p, HIDDEN
        h = np.zeros(hsz, np.float32)
        for t in tokens:
            gi = self._gi[t]
            gh = p["w_hh"] @ h + p["b_hh"]
            r = 1.0 / (1.0 + np.exp(-(gi[:hsz] + gh[:hsz])))
            z = 1.0 / (1.0 + np.exp(-(gi[hsz : 2 * hsz] + gh[hsz : 2 * hsz])))
            n = np.tanh(gi[2 * hsz :] + r * gh[2 * hsz :])
            h = (1.0 - z) * n + z * h
        self._cache[tokens] = h
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return h

    def logits(self, app: str, agents: list[str], cols: np.ndarray) -> np.ndarray:
        h = self._hidden(self._tokens(app, agents))
        bag = np.unique(cols & ((1 << BAG_BITS) - 1))
        c = np.tanh(self.p["bag"][bag].sum(axis=0) + self.p["bag_b"])
        return self.p["out_w"] @ np.concatenate([h, c]) + self.p["out_b"]

    def probs(self, ctx: StateContext) -> np.ndarray:
        agents = [a for r in ctx.rounds for a in r]
        p_all = softmax(self.logits(ctx.state.app, agents, ctx.cols))
        ids = np.array([self.index.get(_key(ctx.state.app, a), -1) for a in ctx.candidates])
        known = ids >= 0
        p = np.full(len(ids), 1e-4)
        p[known] += p_all[ids[known]]
        return p / p.sum()

    # ---- training -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train_examples: list[Example],
        stats: HistoryStats,
        config,
        report=None,
        warm: GruExpert | None = None,
    ) -> GruExpert:
        torch = require("torch", "gru", "training the GRU expert")
        from pbkv.predictor.features import state_features

        report = report or (lambda stage, done, total: None)
        torch.manual_seed(config.seed)
        torch.set_num_threads(max(1, config.gru_threads))
        torch.use_deterministic_algorithms(True)
        vocab = [PAD, UNK] + sorted(
            _key(app, a) for app in stats.apps for a in stats.known_agents(app)
        )
        init = warm.p if warm is not None and warm.vocab == vocab else None
        index = {t: i for i, t in enumerate(vocab)}
        rng = np.random.default_rng(config.seed)
        exs = train_examples
        if len(exs) > config.gru_max_examples:
            exs = [
                exs[i]
                for i in np.sort(rng.choice(len(exs), config.gru_max_examples, replace=False))
            ]
        seqs = np.zeros((len(exs), SEQ_LEN), np.int64)
        targets = np.zeros((len(exs), len(vocab)), np.float32)
        bag_ids: list[np.ndarray] = []
        for i, ex in enumerate(exs):
            app = ex.state.app
            agents = [a for r in round_agents(ex.state) for a in r][-SEQ_LEN:]
            ids = [index.get(_key(app, a), 1) for a in agents]
            seqs[i, SEQ_LEN - len(ids) :] = ids
            for a in ex.targets:
                targets[i, index.get(_key(app, a), 1)] += 1.0 / len(ex.targets)
            cols = np.unique(state_features(ex.state, config.features) & ((1 << BAG_BITS) - 1))
            bag_ids.append(cols.astype(np.int64))

        model = _Net(len(vocab))
        if init is not None:
            model.load_numpy(init)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        seq_t, tgt_t = torch.from_numpy(seqs), torch.from_numpy(targets)
        batch = 256
        for epoch in range(config.gru_epochs):
            order = torch.from_numpy(rng.permutation(len(exs)))
            for start in range(0, len(exs), batch):
                idx = order[start : start + batch]
                parts = [bag_ids[j] for j in idx.tolist()]
                offs = np.cumsum([0] + [len(b) for b in parts[:-1]])
                logits = model(
                    seq_t[idx], torch.from_numpy(np.concatenate(parts)), torch.from_numpy(offs)
                )
                loss = -(tgt_t[idx] * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            report("gru", epoch + 1, config.gru_epochs)
        torch.use_deterministic_algorithms(False)
        return cls(vocab, model.to_numpy())

    # ---- persistence ----------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The weights as ``weights.npz`` arrays, and what ``model.json`` keeps of the GRU."""
        arrays = {_PREFIX + k: np.ascontiguousarray(self.p[k]) for k in PARAMS}
        return arrays, {"vocab": self.vocab, "seq_len": SEQ_LEN, "bag_bits": BAG_BITS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> GruExpert:
        _check_shape(info)
        missing = [k for k in PARAMS if _PREFIX + k not in arrays]
        if missing:
            raise ValueError(f"weights.npz lacks the GRU arrays {', '.join(missing)}")
        return cls(list(info["vocab"]), {k: arrays[_PREFIX + k] for k in PARAMS})

    @classmethod
    def load_torch_file(cls, path: Path, info: dict[str, Any]) -> GruExpert:
        """A GRU stored by an older pbkv as a torch state dict (``gru.pt``)."""
        torch = require("torch", "gru", f"reading {path} (a GRU saved by an older pbkv)")
        _check_shape(info)
        state = torch.load(path, weights_only=True)
        return cls(list(info["vocab"]), {k: v.numpy() for k, v in state.items()})


def _check_shape(info: dict[str, Any]) -> None:
    if info.get("seq_len") != SEQ_LEN or info.get("bag_bits") != BAG_BITS:
        raise ValueError(f"GRU shape {info} differs from this pbkv's")


def _torch_net():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, EMBED)
            self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
            self.bag = nn.EmbeddingBag(1 << BAG_BITS, CONTEXT, mode="sum")
            self.bag_b = nn.Parameter(torch.zeros(CONTEXT))
            self.out = nn.Linear(HIDDEN + CONTEXT, vocab_size)
            nn.init.normal_(self.bag.weight, std=0.01)

        def forward(self, seqs, bag_ids, bag_offsets):
            _, h = self.gru(self.embed(seqs))
            c = torch.tanh(self.bag(bag_ids, bag_offsets) + self.bag_b)
            return self.out(torch.cat([h[0], c], dim=1))

        def to_numpy(self) -> dict[str, np.ndarray]:
            g = self.gru
            return {
                k: v.detach().numpy().astype(np.float32).copy()
                for k, v in {
                    "embed": self.embed.weight,
                    "w_ih": g.weight_ih_l0,
                    "w_hh": g.weight_hh_l0,
                    "b_ih": g.bias_ih_l0,
                    "b_hh": g.bias_hh_l0,
                    "bag": self.bag.weight,
                    "bag_b": self.bag_b,
                    "out_w": self.out.weight,
                    "out_b": self.out.bias,
                }.items()
            }

        def load_numpy(self, p: dict[str, np.ndarray]) -> None:
            g = self.gru
            with torch.no_grad():
                for param, key in (
                    (self.embed.weight, "embed"),
                    (g.weight_ih_l0, "w_ih"),
                    (g.weight_hh_l0, "w_hh"),
                    (g.bias_ih_l0, "b_ih"),
                    (g.bias_hh_l0, "b_hh"),
                    (self.bag.weight, "bag"),
                    (self.bag_b, "bag_b"),
                    (self.out.weight, "out_w"),
                    (self.out.bias, "out_b"),
                ):
                    param.copy_(torch.from_numpy(p[key]))

    return Net


def _Net(vocab_size: int):  # noqa: N802 - a class factory (torch imported lazily)
    return _torch_net()(vocab_size)
