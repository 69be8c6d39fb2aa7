"""``pbkv traces ...`` through the real CLI entry point."""

from __future__ import annotations

import importlib.util
import json

import pytest
from cli_run import pbkv
from trace_lines import wf_dict, write_lines  # same folder (pytest prepend import mode)

from pbkv.cli import main
from pbkv.training.samples import sample_paths
from pbkv.training.trace_io import load_workflows


def test_validate_valid_file(tmp_path, capsys):
    path = write_lines(tmp_path / "ok.jsonl", [wf_dict("a"), wf_dict("b")])
    assert main(["traces", "validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid (2 workflows, 4 steps)\n"


def test_validate_prints_every_problem_and_exits_1(tmp_path, capsys):
    bad = wf_dict("b")
    bad["steps"][1]["prompt"][1]["tokens"] = -1
    bad["steps"][0]["agent"] = ""
    path = write_lines(tmp_path / "bad.jsonl", [wf_dict("a"), bad, "{"])
    assert main(["traces", "validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}:2: steps[0].agent: must not be empty",
        f"{path}:2: steps[1].prompt[1].tokens: must be >= 0, got -1",
        f"{path}:3: truncated JSON: the line ends inside a value (Expecting property name "
        f"enclosed in double quotes)",
    ]
    assert "3 problems; 1 workflow loaded, 2 lines skipped" in err


def test_validate_huge_line_limit(tmp_path, capsys):
    path = write_lines(tmp_path / "h.jsonl", [wf_dict("a")])
    assert main(["traces", "validate", "--max-line-bytes", "50", str(path)]) == 1
    assert "line longer than 50 bytes (skipped unread)" in capsys.readouterr().out


def test_stats_on_a_bundled_sample(capsys):
    assert main(["traces", "stats", str(sample_paths()["captain-agent"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("app captain-agent: 90 workflows, 777 steps, 4 agents\n")
    assert "H(next|prev)" in out and "Computer_terminal" in out


def test_stats_json_and_bad_file(tmp_path, capsys):
    good = write_lines(tmp_path / "g.jsonl", [wf_dict("a")])
    assert main(["traces", "stats", "--json", str(good)]) == 0
    (app,) = json.loads(capsys.readouterr().out)
    assert (app["app"], app["workflows"], app["steps"]) == ("demo", 1, 2)
    bad = write_lines(tmp_path / "b.jsonl", [wf_dict("a"), "{"])
    assert main(["traces", "stats", str(bad)]) == 2
    assert "b.jsonl:2: truncated JSON" in capsys.readouterr().err
    assert main(["traces", "stats", "--skip-invalid", str(bad)]) == 0
    assert "1 workflow loaded, 1 line skipped" in capsys.readouterr().err


def test_import_writes_a_valid_trace_and_prints_the_accounting(tmp_path, capsys):
    src = tmp_path / "runs"
    src.mkdir()
    (src / "1.json").write_text(
        json.dumps(
            {
                "question": "q",
                "history": [
                    {"role": "human", "content": "q"},
                    {"role": "Orchestrator (-> WebSurfer)", "content": "go"},
                    {"role": "WebSurfer", "content": "done"},
                ],
            }
        )
    )
    (src / "2.json").write_text("{broken")
    out = tmp_path / "out.jsonl.gz"
    assert (
        main(
            [
                "traces",
                "import",
                "--format",
                "who-when-magentic",
                "--no-progress",
                str(src),
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.splitlines() == [
        "2 files, 3 agent records -> 1 workflow, 2 steps",
        "skipped (every one counted):",
        "       1  file: unreadable JSON (JSONDecodeError)",
        "       1  record: human request (kept as task + shared history)",
        f"wrote 1 workflow to {out}",
    ]
    (wf,) = load_workflows(out)
    assert wf.agents == ("Orchestrator", "WebSurfer")


def test_import_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["traces", "import", "--format", "autogen", str(tmp_path), "x.jsonl"])
    assert info.value.code == 2
    assert "invalid choice: 'autogen'" in capsys.readouterr().err
    assert (
        main(
            [
                "traces",
                "import",
                "--format",
                "chatdev",
                str(tmp_path / "nope"),
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "no such file or folder" in capsys.readouterr().err
    assert (
        main(["traces", "import", "--format", "chatdev", str(tmp_path), str(tmp_path / "o.txt")])
        == 2
    )
    assert "must end in .jsonl or .jsonl.gz" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("pbkv.training.synth") is None,
    reason="pbkv.training.synth not written yet",
)
def test_synth_delegates_to_the_synth_module(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "traces",
                "synth",
                "--kind",
                "static",
                "--seed",
                "3",
                "--num-workflows",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(load_workflows(out)) == 4
    assert main(["traces", "validate", str(out)]) == 0


# ---------------------------------------------------- the real command in a subprocess


def test_stats_on_a_missing_file_does_not_suggest_skip_invalid(tmp_path):
    done = pbkv("traces", "stats", tmp_path / "nope.jsonl")
    assert (done.returncode, done.stderr) == (
        2,
        f"pbkv: error: {tmp_path}/nope.jsonl: no such file\n",
    )


def test_validate_counts_one_problem_in_the_singular(tmp_path):
    path = write_lines(tmp_path / "one.jsonl", [wf_dict("a"), "{"])
    done = pbkv("traces", "validate", path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"{path}: 1 problem; ")


def test_import_that_recognises_nothing_fails_and_names_the_format(tmp_path):
    src = tmp_path / "who-and-when"
    src.mkdir()
    (src / "1.json").write_text(
        json.dumps(
            {
                "question": "q",
                "history": [
                    {"role": "human", "content": "q"},
                    {"role": "WebSurfer", "content": "done"},
                ],
            }
        )
    )
    out = tmp_path / "out.jsonl.gz"
    done = pbkv("traces", "import", "--format", "chatdev", "--no-progress", src, out)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr == (
        f"pbkv: error: --format chatdev recognised no run in {src} (0 files, 0 agent records "
        "-> 0 workflows, 0 steps; skipped: nothing); the files look like who-when-magentic: "
        "try --format who-when-magentic; nothing written\n"
    )
    (src / "1.json").write_text("[]")
    done = pbkv("traces", "import", "--format", "who-when-captain", "--no-progress", src, out)
    assert (
        done.returncode == 2
        and "the files look like none of the known formats (chatdev, otlp-json, "
        "who-when-captain, who-when-magentic)"
        in done.stderr
    )
