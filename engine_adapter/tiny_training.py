"""``pbkv model make-tiny --train-steps N``: a few hundred steps of next-token training on text.

A random-weight model's logits are nearly tied, so its greedy token can flip on a ~1e-5
difference in attention arithmetic (a prefix-cache hit splits the prefill differently from a
full one). Briefly trained on text, the model's greedy choices have wide margins, and output
identity across cache policies becomes a real check. The text is tokenized by hashing words
(and punctuation) onto the ids ``FIRST_TOKEN_ID..vocab_size-1``, so every id the benchmarks'
prompts use (``training/materialize.py``) gets a trained embedding.

The default text is the documentation shipped with pbkv (``docs/*.md``, ``README.md``);
``--train-text`` takes any files or folders of text (read locally at run time; derived weights
stay where ``--out`` puts them, nothing is committed). Training is seeded and runs on the CPU.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkv.training.materialize import FIRST_TOKEN_ID, stream_tokens

MAX_TEXT_FILES = 2000  # files read from the --train-text folders
MAX_TEXT_BYTES = 16 * 2**20  # text read in all
TEXT_SUFFIXES = (".md", ".txt", ".log", ".json", ".rst")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    steps: int
    seq_len: int = 64
    batch: int = 8
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "seq_len", "batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train {name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train lr must be positive, got {self.lr}")


def default_text_paths() -> list[Path]:
    """pbkv's own documentation, where the source tree has it."""
    root = Path(__file__).resolve().parents[1]
    return sorted((root / "docs").glob("*.md")) + [p for p in [root / "README.md"] if p.is_file()]


def read_text(paths: list[Path]) -> str:
    """The text of ``paths`` (files, or folders searched for ``TEXT_SUFFIXES`` files), capped at
    ``MAX_TEXT_FILES`` files and ``MAX_TEXT_BYTES`` bytes; a missing path is a ``ValueError``."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            files += found[: MAX_TEXT_FILES - len(files)]
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"training text {path} does not exist")
        if len(files) >= MAX_TEXT_FILES:
            break
    parts, size = [], 0
    for f in files:
        chunk = f.read_text(errors="replace")[: MAX_TEXT_BYTES - size]
        parts.append(chunk)
        size += len(chunk)
        if size >= MAX_TEXT_BYTES:
            break
    return "\n".join(parts)


def tokenize(text: str, vocab_size: int) -> list[int]:
    """Words and punctuation of ``text`` hashed onto ``FIRST_TOKEN_ID..vocab_size-1``."""
    span = vocab_size - FIRST_TOKEN_ID
    ids: dict[str, int] = {}
    out = []
    for word in _WORD.findall(text.lower()):
        if word not in ids:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            ids[word] = FIRST_TOKEN_ID + int.from_bytes(digest, "little") % span
        out.append(ids[word])
    return out


def train(model: Any, token_ids: list[int], config: TrainConfig) -> list[float]:
    """Next-token training of ``model`` (float32, in place) on random windows of
    ``token_ids``; returns the loss per step."""
    import torch

    if len(token_ids) < config.seq_len + 1:
        raise ValueError(
            f"training text has {len(token_ids)} tokens, fewer than a window of {config.seq_len}"
        )
    data = torch.tensor(token_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    model.train()
    losses = []
    for _ in range(config.steps):
        starts = torch.randint(0, len(data) - config.seq_len, (config.batch,), generator=gen)
        batch = torch.stack([data[s : s + config.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss  # shifted inside: t predicts t+1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


PROBE_PROMPTS = 8
PROBE_PROMPT_TOKENS = 128
PROBE_NEW_TOKENS = 8


def greedy_margins(model: Any, vocab_size: int) -> list[float]:
    """top1 - top2 logit at every greedy step of ``PROBE_PROMPTS`` prompts shaped like the
    benchmarks' (uniform token streams, ``training/materialize.py``), ``PROBE_NEW_TOKENS``
    steps each, computed in float32 from the model's weights."""
    import torch

    margins = []
    with torch.no_grad():
        for i in range(PROBE_PROMPTS):
            ids = stream_tokens(f"pbkv-margin-probe-{i}", PROBE_PROMPT_TOKENS, vocab_size)
            seq = torch.tensor([ids], dtype=torch.long)
            for _ in range(PROBE_NEW_TOKENS):
                logits = model(input_ids=seq).logits[0, -1].float()
                top = torch.topk(logits, 2).values
                margins.append(float(top[0] - top[1]))
                seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
    return margins
