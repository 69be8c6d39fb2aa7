"""``pbkv serve --shadow``: bad shadow settings are one error line naming the knob."""

from __future__ import annotations

from pbkv.cli import main


def test_shadow_settings_are_checked_before_serving(capsys, tmp_path):
    assert main(["serve", "--shadow", "tcp://127.0.0.1:5608", "--print-config"]) == 2
    assert "shadow_gpu_blocks must be the stock engine's GPU KV blocks" in capsys.readouterr().err
    assert main(["serve", "--shadow", "nonsense", "--shadow-gpu-blocks", "8"]) == 2
    assert "shadow_endpoint 'nonsense' is not a ZMQ address" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text(
        '[service]\nshadow_endpoint = "tcp://127.0.0.1:5608"\nshadow_gpu_blocks = 8\n'
        'shadow_cost_model = "nope"\nshadow_report_mode = "full"\n'
    )
    store = tmp_path / "t.sqlite3"
    assert main(["serve", "--config", str(config), "--store-path", str(store)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "pbkv: error: --shadow: unknown engine preset 'nope'; known: h100-llama8b, vllm-cpu\n"
    )
    assert not store.exists()  # refused before anything was opened
    assert main(["serve", "--config", str(config), "--print-config"]) == 0
    assert 'shadow_report_mode = "full"' in capsys.readouterr().out
