"""``pbkv train`` / ``pbkv evaluate``: artifacts, determinism, continuation, bad input."""

from __future__ import annotations

import argparse
import json

import pytest
from cli_run import pbkv

from pbkv.cli import CliError
from pbkv.predictor.artifact import load_model
from pbkv.predictor.examples import examples, state_at
from pbkv.training import train_cli
from pbkv.training.synth import synthesize
from pbkv.training.trace_io import write_workflows


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    write_workflows(d / "train.jsonl.gz", synthesize("dynamic", seed=3, num_workflows=150))
    write_workflows(d / "test.jsonl", synthesize("dynamic", seed=4, num_workflows=60))
    return d


def test_train_writes_versioned_artifact_deterministically(traces, tmp_path):
    for out in ("a", "b"):
        args = _parse(
            [
                "train",
                "--traces",
                str(traces / "train.jsonl.gz"),
                "--out",
                str(tmp_path / out),
                "--seed",
                "7",
                "--no-progress",
            ]
        )
        assert args.func(args) == 0
    meta_a = json.loads((tmp_path / "a" / "metadata.json").read_text())
    meta_b = json.loads((tmp_path / "b" / "metadata.json").read_text())
    for key in ("training_data_hash", "metrics", "feature_config", "library_versions"):
        assert meta_a[key] == meta_b[key]
    assert meta_a["num_workflows"] == 150 and meta_a["config"]["seed"] == 7
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    wf = synthesize("dynamic", seed=4, num_workflows=1)[0]
    assert a.forecast(state_at(wf, 1)) == b.forecast(state_at(wf, 1))


def test_continue_from_model_adds_history(traces, tmp_path):
    base = _parse(
        [
            "train",
            "--traces",
            str(traces / "train.jsonl.gz"),
            "--out",
            str(tmp_path / "m0"),
            "--no-progress",
        ]
    )
    base.func(base)
    more = _parse(
        [
            "train",
            "--traces",
            str(traces / "test.jsonl"),
            "--out",
            str(tmp_path / "m1"),
            "--from",
            str(tmp_path / "m0"),
            "--no-progress",
        ]
    )
    assert more.func(more) == 0
    n0 = sum(h.num_workflows for h in load_model(tmp_path / "m0").stats.apps.values())
    n1 = sum(h.num_workflows for h in load_model(tmp_path / "m1").stats.apps.values())
    assert (n0, n1) == (150, 210)


def test_evaluate_prints_table_and_json(traces, tmp_path, capsys):
    t = _parse(
        [
            "train",
            "--traces",
            str(traces / "train.jsonl.gz"),
            "--out",
            str(tmp_path / "m"),
            "--no-progress",
        ]
    )
    t.func(t)
    e = _parse(
        [
            "evaluate",
            "--model",
            str(tmp_path / "m"),
            "--traces",
            str(traces / "test.jsonl"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert e.func(e) == 0
    out = capsys.readouterr().out
    assert "== all" in out and "static-graph" in out and "oracle" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) == {
        "fused",
        "frequency",
        "markov1",
        "markov",
        "recency",
        "static-graph",
        "oracle",
    }
    assert data["oracle"]["all"]["top1"] == 1.0


def test_bad_input_is_a_cli_error(traces, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "pbkv.trace.v1", "workflow_id": 3}\n')
    cases = [
        (["train", "--traces", str(empty), "--out", str(tmp_path / "x")], "no workflows"),
        (
            ["train", "--traces", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x")],
            "does not exist",
        ),
        (["train", "--traces", str(bad), "--out", str(tmp_path / "x")], "bad.jsonl:1"),
        (
            ["evaluate", "--model", str(tmp_path / "missing"), "--traces", str(empty)],
            "does not exist",
        ),
        (
            [
                "train",
                "--traces",
                str(traces / "test.jsonl"),
                "--out",
                str(tmp_path / "x"),
                "--experts",
                "markov,psychic",
            ],
            "experts must be",
        ),
    ]
    for argv, message in cases:
        args = _parse([*argv, "--no-progress"] if argv[0] == "train" else argv)
        with pytest.raises(CliError, match=message):
            args.func(args)


def test_evaluate_cross_validation_pools_all_folds(traces, tmp_path):
    e = _parse(
        [
            "evaluate",
            "--cv",
            "2",
            "--traces",
            str(traces / "test.jsonl"),
            "--out",
            str(tmp_path / "cv.json"),
        ]
    )
    assert e.func(e) == 0
    data = json.loads((tmp_path / "cv.json").read_text())
    expected = sum(len(list(examples(w))) for w in synthesize("dynamic", seed=4, num_workflows=60))
    assert data["fused"]["all"]["examples"] == expected  # every workflow held out once
    assert data["oracle"]["all"]["top1"] == 1.0
    bad = _parse(["evaluate", "--cv", "1", "--traces", str(traces / "test.jsonl")])
    with pytest.raises(CliError, match="--cv must be >= 2"):
        bad.func(bad)


# ---------------------------------------------------- the real command in a subprocess


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_train_out_onto_a_file_fails_before_training(traces, tmp_path):
    target = tmp_path / "x.jsonl"
    target.write_text("my traces\n")
    done = pbkv("train", "--traces", traces / "train.jsonl.gz", "--out", target, "--no-progress")
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr == f"pbkv: error: {target} exists and is not a directory; a model is "
        "a directory\n"
    )
    assert _names(tmp_path) == ["x.jsonl"] and target.read_text() == "my traces\n"


def test_train_refuses_a_folder_of_other_files_unless_forced(traces, tmp_path):
    out = tmp_path / "results"
    (out / "plots").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    args = ("train", "--traces", traces / "train.jsonl.gz", "--out", out, "--no-progress")
    done = pbkv(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"pbkv: error: {out} is not empty and holds no pbkv model; "
        "choose another directory or pass --force"
    )
    assert _names(out) == ["notes.txt", "plots"]
    done = pbkv(*args, "--force")
    assert done.returncode == 0, done.stderr
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("results.replaced-")]
    assert _names(kept) == ["notes.txt", "plots"]
    assert "metadata.json" in _names(out)


def test_evaluate_warns_when_it_sees_training_workflows(traces, tmp_path):
    model = tmp_path / "m"
    done = pbkv("train", "--traces", traces / "train.jsonl.gz", "--out", model, "--no-progress")
    assert done.returncode == 0, done.stderr
    meta = json.loads((model / "metadata.json").read_text())
    assert len(meta["training_set"]["workflow_ids"]) == 150
    held = meta["metrics"]["validation_top1_per_app"]
    done = pbkv("evaluate", "--model", model, "--traces", traces / "train.jsonl.gz")
    assert done.returncode == 0
    figures = ", ".join(f"{app} {acc:.3f}" for app, acc in sorted(held.items()))
    assert done.stderr.splitlines() == [
        "warning: 150 of the 150 evaluated workflows were in this model's training set, so its "
        "figures below are not held-out results.",
        f"held-out top-1 recorded at training (validation split or out-of-fold): {figures}",
    ]
    done = pbkv("evaluate", "--model", model, "--traces", traces / "test.jsonl")
    assert (done.returncode, done.stderr) == (0, "")
    # an artifact from before the record still loads; overlap cannot be checked
    del meta["training_set"]
    (model / "metadata.json").write_text(json.dumps(meta))
    done = pbkv("evaluate", "--model", model, "--traces", traces / "train.jsonl.gz")
    assert done.returncode == 0 and done.stdout.startswith("== ")
    assert done.stderr == (
        "note: this model records no training set (made by an older "
        "pbkv); overlap with the evaluation traces cannot be checked\n"
    )
