"""Context expert ``linear``: per-app scikit-learn ``SGDClassifier`` (logistic loss) over the
hashed state features, stored compactly for microsecond inference.

Training uses scikit-learn; inference does not call it: only the columns any weight uses are
kept (``used_cols``, sorted), so a state's logits are a gather and a sum::

    logits = W[:, searchsorted(used_cols, state_cols)].sum(axis=1) + b

A fan-out round's agents are each a target with weight 1 / len(round). Agents the classifier
never saw (new names, or classes beyond ``max_classes``) share the ``<other>`` class's mass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pbkv.predictor.experts import Expert, StateContext, softmax
from pbkv.predictor.features import state_features

OTHER = "<other>"


@dataclass(slots=True)
class AppLinear:
    classes: tuple[str, ...]
    used_cols: np.ndarray  # int64, sorted
    weights: np.ndarray  # float32 (num_classes, len(used_cols))
    bias: np.ndarray  # float32 (num_classes,)

    def logits(self, cols: np.ndarray) -> np.ndarray:
        return self.weights[:, _matches(self.used_cols, cols)].sum(axis=1) + self.bias


def _matches(used: np.ndarray, cols: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(used, cols)
    ok = pos < len(used)
    pos, cols = pos[ok], cols[ok]
    return pos[used[pos] == cols]


class LinearExpert(Expert):
    name = "linear"

    def __init__(self, apps: dict[str, AppLinear]) -> None:
        self.apps = apps
        self._index: dict[str, dict[str, int]] = {
            app: {c: i for i, c in enumerate(m.classes)} for app, m in apps.items()
        }

    def probs(self, ctx: StateContext) -> np.ndarray:
        n = len(ctx.candidates)
        model = self.apps.get(ctx.state.app)
        if model is None:
            return np.full(n, 1.0 / n)
        p_cls = softmax(model.logits(ctx.cols))
        index = self._index[ctx.state.app]
        idx = np.array([index.get(a, -1) for a in ctx.candidates])
        known = idx >= 0
        p = np.zeros(n)
        p[known] = p_cls[idx[known]]
        other = index.get(OTHER)
        rest = (p_cls[other] if other is not None else 0.0) + 1e-4
        if (~known).any():
            p[~known] = rest / (~known).sum()
        p = np.maximum(p, 1e-6)
        return p / p.sum()

    # ---- training -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        rows_by_app: dict[str, list[tuple[np.ndarray, tuple[str, ...]]]],
        num_cols: int,
        seed: int,
        max_classes: int = 64,
        epochs: int = 5,
        alpha: float = 1e-5,
        warm: LinearExpert | None = None,
    ) -> LinearExpert:
        """``rows_by_app[app]``: (feature columns, target agents) per training example."""
        import scipy.sparse as sp
        from sklearn.linear_model import SGDClassifier

        apps: dict[str, AppLinear] = {}
        for app, rows in sorted(rows_by_app.items()):
            counts = Counter(a for _, targets in rows for a in targets)
            keep = {a for a, _ in counts.most_common(max_classes)}
            labels, weights, indptr, indices = [], [], [0], []
            for cols, targets in rows:
                for a in targets:
                    labels.append(a if a in keep else OTHER)
                    weights.append(1.0 / len(targets))
                    indices.append(cols)
                    indptr.append(indptr[-1] + len(cols))
            classes = sorted(set(labels))
            if len(classes) < 2:  # one agent only: nothing to discriminate
                apps[app] = AppLinear(
                    tuple(classes),
                    np.zeros(0, np.int64),
                    np.zeros((len(classes), 0), np.float32),
                    np.zeros(len(classes), np.float32),
                )
                continue
            # Fit over the columns this app's rows use only (a few thousand of 2**bits):
            # SGD's per-epoch cost includes the weight vector's length.
            all_cols = np.concatenate(indices)
            used, compact = np.unique(all_cols, return_inverse=True)
            x = sp.csr_matrix(
                (np.ones(indptr[-1], np.float32), compact.astype(np.int64), np.array(indptr)),
                shape=(len(labels), len(used)),
            )
            # Small sets need more passes to converge: aim at ~100k updates, within bounds.
            passes = int(min(50, max(epochs, 100_000 // max(1, len(labels)))))
            clf = SGDClassifier(
                loss="log_loss",
                alpha=alpha,
                max_iter=passes,
                tol=None,
                random_state=seed,
                average=False,
            )
            init = warm.apps.get(app) if warm else None
            if init is not None and tuple(init.classes) == tuple(classes):
                coef = np.zeros((len(classes), len(used)))
                pos = np.searchsorted(init.used_cols, used)
                ok = pos < len(init.used_cols)
                ok[ok] = init.used_cols[pos[ok]] == used[ok]
                coef[:, ok] = init.weights[:, pos[ok]]
                if len(classes) == 2:  # sklearn's binary coef is one row (see below)
                    coef = coef[1:] - coef[:1]
                clf.fit(
                    x,
                    labels,
                    sample_weight=np.array(weights),
                    coef_init=coef,
                    intercept_init=(
                        init.bias[1:] - init.bias[:1] if len(classes) == 2 else init.bias
                    ).astype(np.float64),
                )
            else:
                clf.fit(x, labels, sample_weight=np.array(weights))
            coef = clf.coef_ if len(classes) > 2 else np.vstack([-clf.coef_, clf.coef_]) / 2
            bias = (
                clf.intercept_
                if len(classes) > 2
                else np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2
            )
            keep_cols = np.flatnonzero(np.abs(coef).max(axis=0) > 1e-6)
            apps[app] = AppLinear(
                tuple(clf.classes_),
                used[keep_cols].astype(np.int64),
                coef[:, keep_cols].astype(np.float32),
                bias.astype(np.float32),
            )
        return cls(apps)

    # ---- persistence ----------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        arrays, classes = {}, {}
        for i, (app, m) in enumerate(sorted(self.apps.items())):
            arrays[f"linear{i}_cols"] = m.used_cols
            arrays[f"linear{i}_w"] = m.weights
            arrays[f"linear{i}_b"] = m.bias
            classes[app] = [str(i), *m.classes]
        return arrays, classes

    @classmethod
    def from_arrays(cls, arrays, classes: dict[str, list[str]]) -> LinearExpert:
        apps = {}
        for app, (i, *names) in classes.items():
            apps[app] = AppLinear(
                tuple(names),
                arrays[f"linear{i}_cols"],
                arrays[f"linear{i}_w"],
                arrays[f"linear{i}_b"],
            )
        return cls(apps)


def fit_linear(train_examples: list, config, report, warm=None) -> LinearExpert:
    """The fused model's linear expert from its training examples (``config``: its
    ``FusedConfig``; ``warm``: a fused model whose linear expert warm-starts this one)."""
    rows_by_app: dict[str, list] = {}
    for i, ex in enumerate(train_examples):
        rows_by_app.setdefault(ex.state.app, []).append(
            (state_features(ex.state, config.features), ex.targets)
        )
        if i % 5000 == 0:
            report("features", i, len(train_examples))
    report("features", len(train_examples), len(train_examples))
    warm_linear = (
        next((e for e in warm.experts if isinstance(e, LinearExpert)), None) if warm else None
    )
    expert = LinearExpert.fit(
        rows_by_app,
        1 << config.features.hash_bits,
        config.seed,
        epochs=config.linear_epochs,
        alpha=config.linear_alpha,
        warm=warm_linear,
    )
    report("linear", 1, 1)
    return expert
