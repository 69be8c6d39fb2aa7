"""The optional GRU expert: trains deterministically, its numpy inference matches torch, and it
round-trips through an artifact."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from pbkv.cli import main
from pbkv.errors import MissingExtra
from pbkv.predictor.artifact import load_model, save_model
from pbkv.predictor.examples import examples, state_at
from pbkv.predictor.fused import FusedConfig, FusedPredictor
from pbkv.predictor.gru import PARAMS, SEQ_LEN, GruExpert, _Net
from pbkv.training.synth import synthesize
from pbkv.training.trace_io import write_workflows

CONFIG = FusedConfig(
    seed=1, experts=("markov", "gru"), gru_epochs=1, gru_max_examples=400, cross_fit_max_workflows=0
)


@pytest.fixture(scope="module")
def model():
    return FusedPredictor.fit(synthesize("dynamic", seed=5, num_workflows=120), CONFIG)


def test_numpy_inference_matches_torch(model):
    gru = next(e for e in model.experts if isinstance(e, GruExpert))
    net = _Net(len(gru.vocab))
    net.load_numpy(gru.p)
    wf = synthesize("dynamic", seed=6, num_workflows=1)[0]
    ex = list(examples(wf))[3]
    ctx = model.context(ex.state)
    agents = [a for r in ctx.rounds for a in r]
    ours = gru.logits(ex.state.app, agents, ctx.cols)
    tokens = torch.tensor([gru._tokens(ex.state.app, agents)])
    assert tokens.shape == (1, SEQ_LEN)
    bag = torch.from_numpy(np.unique(ctx.cols & 0xFFFF).astype(np.int64))
    with torch.no_grad():
        theirs = net(tokens, bag, torch.tensor([0])).numpy()[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_gru_training_is_deterministic_and_round_trips(model, tmp_path):
    again = FusedPredictor.fit(synthesize("dynamic", seed=5, num_workflows=120), CONFIG)
    state = state_at(synthesize("dynamic", seed=6, num_workflows=1)[0], 2)
    assert again.forecast(state) == model.forecast(state)
    save_model(model, tmp_path / "m")
    assert not (tmp_path / "m" / "gru.pt").exists()  # numpy arrays in weights.npz
    with np.load(tmp_path / "m" / "weights.npz") as npz:
        assert sorted(k for k in npz.files if k.startswith("gru.")) == sorted(
            f"gru.{k}" for k in PARAMS
        )
    assert load_model(tmp_path / "m").forecast(state) == model.forecast(state)


@pytest.fixture
def no_torch(monkeypatch):
    """torch absent, as in a plain `pip install pbkv` (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_a_saved_gru_loads_and_forecasts_without_torch(model, tmp_path, no_torch):
    save_model(model, tmp_path / "m")
    state = state_at(synthesize("dynamic", seed=6, num_workflows=1)[0], 2)
    assert load_model(tmp_path / "m").forecast(state) == model.forecast(state)


def test_training_the_gru_without_torch_names_the_extra(no_torch):
    with pytest.raises(MissingExtra) as err:
        FusedPredictor.fit(synthesize("dynamic", seed=5, num_workflows=20), CONFIG)
    assert str(err.value) == (
        "the gru expert needs torch, which is not installed: pip install 'pbkv[gru]'"
    )


def test_pbkv_train_with_the_gru_without_torch_fails_at_once(tmp_path, no_torch, capsys):
    trace = tmp_path / "t.jsonl"
    write_workflows(trace, synthesize("dynamic", seed=5, num_workflows=5))
    code = main(
        [
            "train",
            "--traces",
            str(trace),
            "--out",
            str(tmp_path / "m"),
            "--experts",
            "markov,gru",
            "--no-progress",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        "pbkv: error: the gru expert needs torch, which is not installed: pip install 'pbkv[gru]'\n"
    )
    assert not (tmp_path / "m").exists()


def _legacy(model, path):
    """The model as an older pbkv saved it: the GRU in a torch ``gru.pt``."""
    save_model(model, path)
    gru = next(e for e in model.experts if isinstance(e, GruExpert))
    torch.save({k: torch.from_numpy(v) for k, v in gru.p.items()}, path / "gru.pt")
    meta = json.loads((path / "metadata.json").read_text())
    meta["files"].append("gru.pt")
    (path / "metadata.json").write_text(json.dumps(meta))


def test_an_older_gru_pt_loads_with_torch_and_names_the_extra_without(model, tmp_path, monkeypatch):
    _legacy(model, tmp_path / "old")
    state = state_at(synthesize("dynamic", seed=6, num_workflows=1)[0], 2)
    assert load_model(tmp_path / "old").forecast(state) == model.forecast(state)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra) as err:
        load_model(tmp_path / "old")
    assert str(err.value) == (
        f"reading {tmp_path / 'old' / 'gru.pt'} (a GRU saved by an older pbkv) needs torch, "
        "which is not installed: pip install 'pbkv[gru]'"
    )
