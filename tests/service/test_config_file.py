"""``pbkv serve --config FILE``: every knob from TOML, flags on top, errors that name the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pbkv.cache_manager.planner import PlannerConfig
from pbkv.cache_manager.policies import POLICIES, PbkvPolicyConfig
from pbkv.cache_manager.scorer import ScorerConfig
from pbkv.cli import main
from pbkv.service.config import ServiceConfig
from pbkv.service.config_file import ConfigFileError, build, reference_markdown, to_toml
from pbkv.service.server import build_manager

DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pbkv.toml"
    path.write_text(text)
    return path


def test_file_knobs_reach_each_component_and_the_rest_keep_their_defaults() -> None:
    tree = tomllib.loads("""
        [service]
        port = 6000
        http_port = false
        store_path = "/tmp/x.sqlite3"
        recent_ended = 7
        [manager]
        policy = "pbkv"
        horizon = 3
        [manager.planner]
        plan_max_blocks = 4096
        [manager.pbkv]
        min_offload_p = 0.25
        [manager.pbkv.scorer]
        lcb_z = 1.5
        [manager.accuracy]
        window = 9
    """)
    config = build(tree)
    assert (config.port, config.http_port, config.store_path) == (
        6000,
        None,
        Path("/tmp/x.sqlite3"),
    )
    assert config.max_context_bytes == ServiceConfig().max_context_bytes
    manager = build_manager(config)
    c = manager.config
    assert c.horizon == 3 and c.ended_memory == 7
    assert c.planner == PlannerConfig(plan_max_blocks=4096)
    assert c.pbkv == PbkvPolicyConfig(min_offload_p=0.25, scorer=ScorerConfig(lcb_z=1.5))
    assert (c.accuracy.window, c.accuracy.min_samples) == (9, 20)
    # The policy got its own section: pbkv's min_offload_p and the scorer's lcb_z.
    assert manager.policy.min_offload_p == 0.25 and manager.policy.horizon == 3
    assert manager.policy.scorer.config.lcb_z == 1.5


def test_print_config_reads_back_as_the_same_config() -> None:
    config = build(
        tomllib.loads("""
        [service]
        watch_model_s = false
        grace_s = 1.5
        [manager]
        policy = "oracle"
        [manager.oracle]
        offload_steps = inf
        [manager.directory]
        bytes_per_token = 64
    """),
        auth_token="secret",
    )
    text = to_toml(config)
    assert "secret" not in text and "auth_token" not in text
    again = build(tomllib.loads(text), auth_token="secret")
    assert again == config
    assert again.manager.oracle.offload_steps == float("inf")
    assert build(tomllib.loads(to_toml(ServiceConfig()))) == ServiceConfig()


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "[manager.planner]\nplan_max_block = 1\n",
            "unknown config key 'manager.planner.plan_max_block'; known in [manager.planner]: "
            "evicting_window_s, host_plan_blocks, offload_window_blocks, plan_max_blocks, "
            "rescore_after_s, rescore_budget, transfer_budget_blocks",
        ),
        (
            "[engine]\nx = 1\n",
            "unknown config key 'engine'; known in [top level]: manager, service",
        ),
        ('[service]\nport = "x"\n', "config key 'service.port' must be int, got 'x'"),
        ("[service]\nport = 70000\n", "[service] port must be in [0, 65535], got 70000"),
        (
            "[service]\ncluster_wait_replicas = 17\n",
            "[service] cluster_wait_replicas must be in [0, 16], got 17",
        ),
        (
            "[service]\ncluster_wait_timeout_ms = 0\n",
            "[service] cluster_wait_timeout_ms must be in [1, 60000], got 0",
        ),
        ("[manager]\nhorizon = 2.5\n", "config key 'manager.horizon' must be int, got 2.5"),
        (
            '[manager]\npolicy = "belady"\n',
            "[manager] unknown cache policy 'belady'; known: "
            + ", ".join(sorted(POLICIES.names())),
        ),
        (
            "[manager.pbkv]\nmin_offload_p = 2\n",
            "[manager.pbkv] PbkvPolicyConfig.min_offload_p must be a number in [0, 1], got 2.0",
        ),
        (
            "[manager.pbkv]\nscorer = 3\n",
            "config key 'manager.pbkv.scorer' must be a table [manager.pbkv.scorer]",
        ),
        (
            "[manager]\nended_memory = 5\n",
            "config key 'manager.ended_memory' is set by [service] recent_ended",
        ),
        (
            '[service]\nauth_token = "t"\n',
            "config key 'service.auth_token' may not be in a file: use --token-file or PBKV_TOKEN",
        ),
    ],
)
def test_bad_keys_and_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        build(tomllib.loads(text))
    assert str(err.value) == message


def test_serve_flags_override_the_file(tmp_path: Path, capsys) -> None:
    path = _write(
        tmp_path,
        "[service]\nport = 6000\ngrace_s = 2.0\n"
        '[manager]\npolicy = "kvflow"\nhorizon = 2\n'
        "[manager.kvflow]\nhold_step = 5\n",
    )
    assert (
        main(
            [
                "serve",
                "--config",
                str(path),
                "--print-config",
                "--port",
                "7000",
                "--policy",
                "lru",
                "--no-dashboard",
            ]
        )
        == 0
    )
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["service"]["port"] == 7000 and printed["service"]["grace_s"] == 2.0
    assert printed["service"]["http_port"] is False
    assert printed["manager"]["policy"] == "lru" and printed["manager"]["horizon"] == 2
    assert printed["manager"]["kvflow"]["hold_step"] == 5
    # Flags that unset a knob win over the same knob's flag and the file.
    assert (
        main(
            [
                "serve",
                "--config",
                str(path),
                "--print-config",
                "--http-port",
                "9",
                "--no-dashboard",
                "--watch-model-s",
                "0",
            ]
        )
        == 0
    )
    printed = tomllib.loads(capsys.readouterr().out)["service"]
    assert printed["http_port"] is False and printed["watch_model_s"] is False


def test_serve_config_errors_are_one_line(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, "[manager.planner]\nplan_max_blocks = -1\n")
    assert main(["serve", "--config", str(path), "--print-config"]) == 2
    assert capsys.readouterr().err == (
        "pbkv: error: [manager.planner] PlannerConfig.plan_max_blocks must be an int >= 0, got -1\n"
    )
    assert main(["serve", "--config", str(tmp_path / "none.toml"), "--print-config"]) == 2
    assert capsys.readouterr().err == (
        f"pbkv: error: --config {tmp_path / 'none.toml'}: No such file or directory\n"
    )
    bad = _write(tmp_path, "[service\n")
    assert main(["serve", "--config", str(bad), "--print-config"]) == 2
    assert capsys.readouterr().err.startswith(f"pbkv: error: --config {bad}: not valid TOML: ")


def test_docs_list_every_knob_with_its_default() -> None:
    table = reference_markdown()
    assert table in DOCS.read_text(), "docs/service.md: paste reference_markdown() again"
    # Every field of every component config is a row (sub-tables are sections, not rows).
    keys = {line.split("`")[1] for line in table.splitlines()[2:]}
    expected = {
        f"service.{f.name}"
        for f in dataclasses.fields(ServiceConfig)
        if f.name not in ("extra", "manager", "auth_token", "token_grants", "otlp_limits")
    }

    def walk(prefix: str, obj: object) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}.{f.name}", value)
            elif f"{prefix}.{f.name}" != "manager.ended_memory":
                expected.add(f"{prefix}.{f.name}")

    walk("manager", ServiceConfig().manager)
    walk("service.otlp_limits", ServiceConfig().otlp_limits)
    assert keys == expected
    assert "| `manager.pbkv.min_offload_p` | `0.7` |" in table
