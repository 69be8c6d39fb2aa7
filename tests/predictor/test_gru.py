"""The optional GRU expert: trains deterministically, its numpy inference matches torch, and it
round-trips through an artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbkv.predictor.artifact import load_model, save_model
from pbkv.predictor.examples import examples, state_at
from pbkv.predictor.fused import FusedConfig, FusedPredictor
from pbkv.predictor.gru import SEQ_LEN, GruExpert, _Net
from pbkv.training.synth import synthesize

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
    assert (tmp_path / "m" / "gru.pt").is_file()
    assert load_model(tmp_path / "m").forecast(state) == model.forecast(state)
