"""``pbkv model make-tiny``: random-weight Llama-architecture models built locally.

Nothing is downloaded: the model is a ``transformers`` ``LlamaForCausalLM`` with seeded random
weights, written with ``save_pretrained``. vLLM serves it with ``skip_tokenizer_init=True`` and
prompts given as token ids, so by default no tokenizer is written. Weights being random does
not matter for cache behaviour (KV size and prefill cost depend only on the shape), and greedy
outputs are still deterministic, which is what the correctness tests compare.

``tokenizer=True`` (``--tokenizer``) also writes a byte-level tokenizer built here (no merges:
one token per UTF-8 byte, ids 3..258 after ``<unk>``, ``<s>``, ``</s>``; the rest of the
vocabulary are placeholder tokens ``<|tN|>``) with a plain chat template, so OpenAI-API chat
requests work (``vllm serve`` without ``--skip-tokenizer-init``; docs/deploy.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 (the model's bos and eos)
BYTE_TOKENS = len(SPECIAL_TOKENS) + 256
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TinyModelConfig:
    layers: int = 2
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    vocab_size: int = 4096
    max_positions: int = 8192
    seed: int = 0
    dtype: str = "bfloat16"
    tokenizer: bool = False  # also write a byte-level tokenizer and a chat template

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size <= 16:
            raise ValueError(f"vocab_size must exceed 16, got {self.vocab_size}")
        if self.tokenizer and self.vocab_size < BYTE_TOKENS:
            raise ValueError(
                f"vocab_size must be at least {BYTE_TOKENS} with a tokenizer "
                f"(3 special tokens and 256 bytes), got {self.vocab_size}"
            )
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes (keys and values, every layer)."""
        elem = 4 if self.dtype == "float32" else 2
        return 2 * self.layers * self.kv_heads * self.head_dim * elem


def make_tiny(out_dir: str | Path, config: TinyModelConfig) -> Path:
    """Write a random-weight Llama model to ``out_dir`` and return the directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions,
        torch_dtype=config.dtype,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(hf_config).to(getattr(torch, config.dtype))
    model.save_pretrained(out, safe_serialization=True)
    if config.tokenizer:
        write_byte_tokenizer(out, config.vocab_size)
    (out / "pbkv-tiny.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return out


def write_byte_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A byte-level tokenizer of exactly ``vocab_size`` tokens, with ``CHAT_TEMPLATE``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = [*SPECIAL_TOKENS, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    names += [f"<|t{i}|>" for i in range(len(names), vocab_size)]
    tok = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(names)}, merges=[], unk_token="<unk>")
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    bos, eos = SPECIAL_TOKENS[1], SPECIAL_TOKENS[2]
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=SPECIAL_TOKENS[0],
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(out_dir)


def tiny_config_of(model_dir: str | Path) -> TinyModelConfig | None:
    """The config a model directory was made with (``None`` if not made by make-tiny)."""
    path = Path(model_dir) / "pbkv-tiny.json"
    if not path.is_file():
        return None
    return TinyModelConfig(**json.loads(path.read_text()))
