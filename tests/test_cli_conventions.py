"""CLI conventions (issue 14, item 7), through the real command in a subprocess."""

from __future__ import annotations

import argparse
import io
import re
import sys
import tomllib
from pathlib import Path

import pytest
from cli_run import pbkv

from pbkv import __version__
from pbkv.cache_manager.policies import POLICIES
from pbkv.cli import HelpFormatter, build_parser, main, subparsers_of, table_console


def test_version_is_the_one_in_pyproject():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
    done = pbkv("--version")
    assert (done.returncode, done.stdout) == (0, f"pbkv {project['version']}\n")


def test_every_option_has_help_text():
    missing = [
        f"{p.prog} {a.option_strings[0]}"
        for p in subparsers_of(build_parser())
        for a in p._actions
        if a.option_strings and not a.help and not isinstance(a, argparse._HelpAction)
    ]
    assert missing == []


def test_every_parser_shows_defaults():
    parsers = list(subparsers_of(build_parser()))
    assert len(parsers) > 10 and {p.formatter_class for p in parsers} == {HelpFormatter}


def test_help_shows_defaults_once():
    done = pbkv("train", "--help")
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert done.returncode == 0
    assert "training seed (split, samplers, models) (default: 0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    done = pbkv("traces", "validate", "--help")
    text = " ".join(done.stdout.split())
    assert "reject longer lines unread (default 32 MiB)" in text
    assert "(default: None)" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["serve", "--store", "mongo"],
            "argument --store: invalid choice: 'mongo' (choose from 'redis', 'sqlite')",
        ),
        (
            ["serve", "--policy", "bogus"],
            "argument --policy: invalid choice: 'bogus' (choose from "
            + ", ".join(f"'{name}'" for name in sorted(POLICIES.names()))
            + ")",
        ),
        (
            ["export-traces", "--store", "mongo", "--out", "x.jsonl"],
            "argument --store: invalid choice: 'mongo'",
        ),
    ],
)
def test_unknown_names_are_refused_before_work(argv, message):
    done = pbkv(*argv)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_user_error_is_one_line_without_traceback(capsys, monkeypatch):
    import pbkv.cli
    from pbkv.registry import Registry

    registry: Registry[int] = Registry("widget")
    parser = argparse.ArgumentParser()
    # main() runs whatever the parsed command is; an UnknownNameError is a UserError
    parser.set_defaults(func=lambda args: registry.create("bogus"))
    monkeypatch.setattr(pbkv.cli, "build_parser", lambda: parser)
    assert main([]) == 2
    assert capsys.readouterr().err == "pbkv: error: unknown widget 'bogus'; known: (none)\n"


def test_tables_keep_their_width_in_a_pipe(monkeypatch):
    from rich.table import Table

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a pipe: not a terminal
    table = Table()
    for i in range(12):
        table.add_column(f"column-{i:02d}")
    table.add_row(*[f"value-{i:02d}" for i in range(12)])
    table_console().print(table)
    row = next(line for line in sys.stdout.getvalue().splitlines() if "value-00" in line)
    assert re.findall(r"value-\d\d", row) == [f"value-{i:02d}" for i in range(12)]
    assert len(row) > 80


def test_a_file_that_cannot_be_opened_is_a_user_error(tmp_path, capsys, monkeypatch):
    import pbkv.cli

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=lambda args: open(tmp_path / "missing.json"))  # noqa: SIM115
    monkeypatch.setattr(pbkv.cli, "build_parser", lambda: parser)
    assert main([]) == 2
    assert capsys.readouterr().err == (
        f"pbkv: error: {tmp_path}/missing.json: No such file or directory\n"
    )
    monkeypatch.setenv("PBKV_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        main([])


def test_evaluate_checks_its_output_before_work(tmp_path):
    done = pbkv(
        "evaluate",
        "--cv",
        "2",
        "--traces",
        tmp_path / "t.jsonl",
        "--out",
        tmp_path / "no" / "out.json",
    )
    assert (done.returncode, done.stderr) == (
        2,
        f"pbkv: error: --out {tmp_path}/no/out.json: folder {tmp_path}/no does not exist\n",
    )


# One convention for outputs: --out FILE|DIR writes, --json prints JSON on stdout. The old
# spellings still work, with one warning line.
OUTPUT_OPTIONS = {  # parser -> its output options (and what --out names)
    "pbkv train": {"--out": "DIR"},
    "pbkv evaluate": {"--out": "FILE", "--json": "switch"},
    "pbkv traces stats": {"--json": "switch"},
    "pbkv traces synth": {"--out": "FILE"},
    "pbkv export-traces": {"--out": "FILE"},
    "pbkv model make-tiny": {"--out": "DIR"},
    "pbkv report": {"--out": "FILE"},
    "pbkv demo": {"--out": "DIR"},
    "pbkv replay": {"--out": "FILE"},
    "pbkv bench predictor": {"--out": "DIR", "--json": "switch"},
    "pbkv bench policies": {"--out": "DIR"},
    "pbkv bench headroom": {"--out": "DIR"},
    "pbkv bench service": {"--out": "DIR"},
    "pbkv bench cluster": {"--out": "DIR"},
    "pbkv bench vllm": {"--out": "DIR"},
    "pbkv bench shadow": {"--out": "DIR"},
    "pbkv bench integration": {"--out": "DIR"},
    "pbkv bench planner": {"--json": "switch"},
    "pbkv bench calibration": {"--out": "DIR", "--json": "switch"},
    "pbkv cluster status": {"--json": "switch"},
}


def test_outputs_are_out_or_a_json_switch():
    from pbkv.cli import DeprecatedAlias

    found = {}
    for p in subparsers_of(build_parser()):
        names = [
            o
            for a in p._actions
            if not isinstance(a, DeprecatedAlias)
            for o in a.option_strings
            if o in ("--out", "--json") or o.startswith("--out-") or o.endswith("-json")
        ]
        if names:
            found[p.prog] = sorted(names)
    assert found == {prog: sorted(opts) for prog, opts in OUTPUT_OPTIONS.items()}
    json_options = [
        a for p in subparsers_of(build_parser()) for a in p._actions if "--json" in a.option_strings
    ]
    assert {a.const for a in json_options} == {True}  # a switch (store_true or nargs="?")


def test_evaluate_json_file_is_a_deprecated_spelling_of_out(tmp_path):
    done = pbkv(
        "evaluate",
        "--cv",
        "2",
        "--traces",
        tmp_path / "t.jsonl",
        "--json",
        tmp_path / "no" / "out.json",
    )
    assert (done.returncode, done.stderr) == (
        2,
        (
            "pbkv: warning: --json FILE is deprecated; use --out FILE (--json alone prints JSON)\n"
            f"pbkv: error: --out {tmp_path}/no/out.json: folder {tmp_path}/no does not exist\n"
        ),
    )


def test_bench_predictor_out_dir_is_a_deprecated_alias(capsys):
    args = build_parser().parse_args(["bench", "predictor", "--out-dir", "somewhere"])
    assert str(args.out) == "somewhere"
    assert capsys.readouterr().err == "pbkv: warning: --out-dir is deprecated; use --out\n"
    args = build_parser().parse_args(["bench", "predictor"])
    assert args.out is None and capsys.readouterr().err == ""


def test_load_summary_counts_in_the_singular():
    from collections import Counter

    from pbkv.training.trace_io import LoadResult

    assert LoadResult([object()]).summary() == "1 workflow loaded, 0 lines skipped"
    one_bad = LoadResult([], skipped_lines=1, skip_reasons=Counter({"bad JSON": 1}))
    assert one_bad.summary() == "0 workflows loaded, 1 line skipped (1 x bad JSON)"
