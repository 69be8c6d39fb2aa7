import json

import pytest

from pbkv.engine_adapter.models import TRAINING_REPORT, TinyModelConfig, make_tiny, tiny_config_of

SMALL = {"layers": 1, "hidden": 64, "heads": 2, "kv_heads": 1, "intermediate": 128}


def test_make_tiny_writes_a_llama_checkpoint(tmp_path):
    cfg = TinyModelConfig(**SMALL, vocab_size=256, max_positions=512)
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


TRAINABLE = TinyModelConfig(**SMALL, vocab_size=512, max_positions=512)


def test_training_widens_the_greedy_margin(tmp_path):
    text = tmp_path / "text.md"
    text.write_text("the cache keeps the blocks the next agent reads first. " * 400)
    out = make_tiny(tmp_path / "m", TRAINABLE, train_steps=40, text_paths=[text])
    report = json.loads((out / TRAINING_REPORT).read_text())
    assert report["train_steps"] == 40
    assert report["loss_last"] < report["loss_first"] / 2
    assert report["median_margin_after"] > 3 * report["median_margin_before"]
    assert tiny_config_of(out) == TRAINABLE
    # no training: no report, and the same random weights as before the option existed
    assert not (make_tiny(tmp_path / "r", TRAINABLE) / TRAINING_REPORT).exists()


def test_training_text_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        make_tiny(tmp_path / "m", TRAINABLE, train_steps=2, text_paths=[tmp_path / "missing"])
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="fewer than a window"):
        make_tiny(tmp_path / "m", TRAINABLE, train_steps=2, text_paths=[short])


def test_make_tiny_tokenizer_is_byte_level_with_a_chat_template(tmp_path):
    from transformers import AutoTokenizer

    cfg = TinyModelConfig(**SMALL, vocab_size=300, max_positions=512, tokenizer=True)
    out = make_tiny(tmp_path / "m", cfg)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 300 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    ids = tok("héllo", add_special_tokens=False)["input_ids"]
    assert len(ids) == len("héllo".encode()) and all(3 <= i < 259 for i in ids)
    assert tok.decode(ids) == "héllo"
    chat = [{"role": "system", "content": "plan"}, {"role": "user", "content": "go"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>plan\n<|user|>go\n<|assistant|>"
    with pytest.raises(ValueError, match="vocab_size must be at least 259 with a tokenizer"):
        TinyModelConfig(vocab_size=258, tokenizer=True)
