import json

import pytest

from pbkv.engine_adapter.models import TinyModelConfig, make_tiny, tiny_config_of


def test_make_tiny_writes_a_llama_checkpoint(tmp_path):
    cfg = TinyModelConfig(
        layers=1,
        hidden=64,
        heads=2,
        kv_heads=1,
        intermediate=128,
        vocab_size=256,
        max_positions=512,
    )
    out = make_tiny(tmp_path / "m", cfg)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    shape = (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"])
    assert shape == (1, 64, 256)
    assert (out / "model.safetensors").is_file()
    assert tiny_config_of(out) == cfg
    assert cfg.kv_bytes_per_token == 2 * 1 * 1 * 32 * 2


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("layers", 0, "layers must be positive"),
        ("hidden", 65, "multiple of heads"),
        ("vocab_size", 10, "vocab_size"),
        ("dtype", "int8", "dtype"),
    ],
)
def test_bad_model_configs_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TinyModelConfig(**{field: value})
