import argparse
import json
import re

import pytest

from pbkv.cli import CliError
from pbkv.dashboard import cli
from pbkv.dashboard.report import ReportError, load_bench, render_report

BENCH = {
    "workload": "dynamic",
    "seed": 7,
    "results": [
        {
            "policy": "lru",
            "gpu_blocks": 256,
            "concurrency": 8,
            "mean_latency_s": 4.0,
            "gpu_hit_rate": 0.30,
        },
        {
            "policy": "pbkv",
            "gpu_blocks": 256,
            "concurrency": 8,
            "mean_latency_s": 2.5,
            "gpu_hit_rate": 0.55,
        },
        {
            "policy": "lru",
            "gpu_blocks": 512,
            "concurrency": 8,
            "mean_latency_s": 3.0,
            "gpu_hit_rate": 0.50,
        },
        {
            "policy": "pbkv",
            "gpu_blocks": 512,
            "concurrency": 8,
            "mean_latency_s": 2.0,
            "gpu_hit_rate": 0.70,
        },
    ],
}


def _cells(html: str, table_class: str) -> list[list[str]]:
    table = re.search(rf"<table class={table_class}>(.*?)</table>", html, re.S).group(1)
    body = table.split("<tbody>")[1]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_report_compares_each_policy_with_lru_in_the_same_configuration():
    html = render_report(BENCH, title="dyn <run>")
    assert "<title>dyn &lt;run&gt;</title>" in html  # escaped
    assert _cells(html, "lru") == [
        ["gpu_blocks=256", "pbkv", "1.60×", "+25.0 pp"],  # 4.0 / 2.5; concurrency constant
        ["gpu_blocks=512", "pbkv", "1.50×", "+20.0 pp"],  # 3.0 / 2.0
    ]
    # two charts (latency, hit rate) against the swept gpu_blocks; concurrency is constant
    assert html.count("<svg") == 2
    assert 'aria-label="mean_latency_s vs gpu_blocks"' in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_report_without_lru_or_measures_still_lists_records():
    html = render_report(
        {
            "runs": [{"name": "a", "value": 1}],
            "note": "x",
            "sizes": [1, 2],
            "summary": {"headline": {"speedup": 1.5}},
        }
    )
    assert "Comparison with LRU" not in html
    assert "<td>a</td><td>1</td>" in html and "<dd>x</dd>" in html
    assert "<dt>sizes</dt><dd>1, 2</dd>" in html
    assert "<h2>summary.headline</h2><dl><dt>speedup</dt><dd>1.5</dd></dl>" in html


def test_report_rejects_files_it_cannot_read(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a":\n')
    with pytest.raises(ReportError, match=r"bad.json: line 2 column 1: invalid JSON"):
        load_bench(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="expected a JSON object at the top, got list"):
        load_bench(tmp_path / "list.json")
    with pytest.raises(ReportError, match="no scalar facts and no list of records"):
        render_report({"nested": {"deeper": []}}, title="empty.json")


def _pbkv(argv: list[str]) -> int:
    # only this component's subcommand: the test must not depend on the others' CLIs
    parser = argparse.ArgumentParser(prog="pbkv")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_the_report(tmp_path, capsys):
    bench = tmp_path / "policies.json"
    bench.write_text(json.dumps(BENCH))
    assert _pbkv(["report", str(bench)]) == 0
    html = (tmp_path / "policies.html").read_text()
    assert "1.60×" in html
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'policies.html'}")
    with pytest.raises(CliError, match="missing.json: cannot read"):
        _pbkv(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.html")])


def test_two_sweeps_give_one_line_per_policy_and_variant():
    rows = [
        {"policy": p, "gpu_blocks": g, "concurrency": c, "mean_latency_s": lat}
        for p, lat in (("lru", 4.0), ("pbkv", 2.0))
        for g in (256, 512)
        for c in (4, 8)
    ]
    html = render_report({"rows": rows})
    assert html.count("<svg") == 2  # latency vs gpu_blocks, latency vs concurrency
    first = html[html.index("<svg") : html.index("</svg>")]
    legend = re.findall(r"class=axis>([a-z]+ concurrency=\d)</text>", first)
    assert legend == [
        "lru concurrency=4",
        "lru concurrency=8",
        "pbkv concurrency=4",
        "pbkv concurrency=8",
    ]
    # colour = policy, dash = the other swept value
    strokes = re.findall(
        r'<polyline [^>]*stroke="(#\w+)" stroke-width=2 '
        r'stroke-dasharray="([^"]*)"',
        first,
    )
    assert strokes == [("#2563eb", ""), ("#2563eb", "7 4"), ("#dc2626", ""), ("#dc2626", "7 4")]
    assert _cells(html, "lru")[0][:3] == ["gpu_blocks=256, concurrency=4", "pbkv", "2.00×"]
