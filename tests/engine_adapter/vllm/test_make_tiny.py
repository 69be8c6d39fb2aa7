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


def test_the_chat_tokenizer_decodes_every_id_and_renders_chats(tmp_path):
    from transformers import AutoTokenizer

    from pbkv.engine_adapter.models import make_chat_tokenizer

    make_chat_tokenizer(tmp_path, 300)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 300 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.decode([259, 299]) == " w259 w299"  # the filler words after the 256 bytes
    text = "héllo, world"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s>user: hi\n<s>assistant:"
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        make_chat_tokenizer(tmp_path / "small", 100)


def test_make_tiny_cli_writes_the_chat_tokenizer_on_request(tmp_path):
    from cli_run import pbkv

    done = pbkv("model", "make-tiny", "--out", tmp_path / "m", "--vocab-size", "512",
                "--layers", "1", "--hidden", "64", "--heads", "2", "--kv-heads", "1",
                "--chat-tokenizer")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    small = pbkv("model", "make-tiny", "--out", tmp_path / "s", "--vocab-size", "100",
                 "--chat-tokenizer")  # fmt: skip
    assert small.returncode == 2
    assert "--chat-tokenizer needs --vocab-size >= 259, got 100" in small.stderr
    assert not (tmp_path / "s").exists()
