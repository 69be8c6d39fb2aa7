"""The fused model on synthetic workloads: quality bar, calibration, leakage, determinism,
bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from predictor_builders import make_workflow

from pbkv.predictor.artifact import load_model, save_model
from pbkv.predictor.examples import examples, finished_state, state_at
from pbkv.predictor.forecast import ObservedStep
from pbkv.predictor.fused import FusedConfig, FusedPredictor
from pbkv.predictor.registry import HISTORY_BASELINES, PREDICTORS
from pbkv.training.evaluate import evaluate
from pbkv.training.synth import synthesize

CONFIG = FusedConfig(seed=0, cross_fit_max_workflows=500)  # 1200 workflows: split mode


@pytest.fixture(scope="module")
def dynamic():
    train = synthesize("dynamic", seed=11, num_workflows=1200)
    test = synthesize("dynamic", seed=12, num_workflows=300)
    return train, test, FusedPredictor.fit(train, CONFIG)


def test_fused_beats_best_history_baseline_by_15_points(dynamic):
    train, test, model = dynamic
    fused = evaluate(model, test)["all"]
    best = max(
        evaluate(PREDICTORS.create(n, workflows=train), test)["all"].top1 for n in HISTORY_BASELINES
    )
    assert fused.top1 >= best + 0.15, (fused.top1, best)


def test_calibration_ece_on_held_out_set(dynamic):
    _, test, model = dynamic
    assert evaluate(model, test)["all"].ece <= 0.05


def test_no_leakage_forecast_at_t_ignores_everything_after_t(dynamic):
    _, test, model = dynamic
    wf = max(test, key=lambda w: len(w.steps))
    for t in range(len(wf.steps)):
        state = state_at(wf, t)
        # a different future: every later step replaced, and the task kept
        changed = dataclasses.replace(
            wf,
            steps=wf.steps[:t]
            + tuple(
                dataclasses.replace(s, agent="intruder", output_text="approved tests passed")
                for s in wf.steps[t:]
            ),
        )
        assert model.forecast(state_at(changed, t)) == model.forecast(state)


def test_training_is_deterministic_for_a_seed(dynamic):
    train, test, model = dynamic
    again = FusedPredictor.fit(train, CONFIG)
    state = state_at(test[0], 2)
    assert again.forecast(state) == model.forecast(state)
    assert np.array_equal(again.fusion.global_weights, model.fusion.global_weights)


def test_artifact_round_trip_and_online_update(dynamic, tmp_path):
    _, test, model = dynamic
    save_model(model, tmp_path / "m", {"metrics": {}})
    loaded = load_model(tmp_path / "m")
    for ex in list(examples(test[1]))[:4]:
        assert loaded.forecast(ex.state) == model.forecast(ex.state)
    n = loaded.stats.apps[test[1].app].num_workflows
    loaded.observe_finished(finished_state(test[1]))
    assert loaded.stats.apps[test[1].app].num_workflows == n + 1


def test_empty_training_set_is_an_error():
    with pytest.raises(ValueError, match="empty training set"):
        FusedPredictor.fit([], CONFIG)


def test_tiny_single_app_one_step_workflows_and_unseen_agents():
    wfs = [
        make_workflow(f"w{i}", "solo", ["A"] if i % 2 else ["A", "B"], task=f"t {i}")
        for i in range(8)
    ]
    model = FusedPredictor.fit(wfs, CONFIG)
    state = state_at(make_workflow("new", "solo", ["A", "Zed"]), 2)
    p = model.next_distribution(state)
    assert set(p) == {"A", "B", "Zed"} and p["Zed"] > 0
    assert sum(p.values()) == pytest.approx(1.0)
    f = model.forecast(state.extended(ObservedStep("Other", end_s=9.0)))
    assert f.get("Other") is not None
    assert model.forecast(state_at(make_workflow("x", "never-seen", ["Q"]), 0)).agents == ()
