"""Content-addressed segments: identical prompt text becomes identical segments.

An importer that can rebuild a prompt's text (the role's system message, the chat so far)
cuts each part into chunks and names every chunk by a hash of its tokens, so the same text
gets the same segment id, and therefore the same token ids (``materialize``), wherever it
appears: in two calls of one role, in a review re-run on unchanged code, at a new offset after
another system message. A prefix cache then shares exactly what it shares on the real text, up
to the last chunk boundary before a difference, and content that recurs at a different offset
is visible in the token ids too (``pbkv.training.reuse``).

Chunks are cut after a line break, where the line is blank or its hash picks it (about one line
in ``CUT_EVERY``): content-defined cuts, so a block of lines that recurs after other text is
cut the same way again. Cutting after a line break keeps token counts additive
(``approx_token_pieces`` of a text is the pieces of its chunks, in order).

    id                   scope     for
    preamble:<hash>      app       text that is the same in every run (before the task)
    history:<hash>       workflow  everything else (the task, the chat, code)
"""

from __future__ import annotations

import hashlib
import re

from pbkv.trace import Segment
from pbkv.training.tokens import approx_token_pieces

CUT_EVERY = 4
_LINES = re.compile(r"[^\n]*\n|[^\n]+")


def chunks(text: str) -> list[str]:
    """``text`` cut after content-chosen line breaks; ``"".join(chunks(t)) == t``."""
    out: list[str] = []
    current: list[str] = []
    for line in _LINES.findall(text):
        current.append(line)
        body = line.strip()
        if not body or _line_hash(body) % CUT_EVERY == 0:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


def _line_hash(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.encode(), digest_size=4).digest(), "little")


def text_segments(text: str, kind: str = "history") -> list[Segment]:
    """``text`` as content-addressed segments of ``kind`` (``history`` or ``preamble``);
    chunks without tokens are left out."""
    out = []
    for chunk in chunks(text):
        pieces = approx_token_pieces(chunk)
        if pieces:
            digest = hashlib.blake2b("\x1f".join(pieces).encode(), digest_size=8).hexdigest()
            out.append(Segment(f"{kind}:{digest}", len(pieces)))
    return out


def placeholder_text(name: str, tokens: int) -> str:
    """A stand-in text of exactly ``tokens`` tokens for fixed content the log does not hold
    (an estimated system prompt), distinct per ``name``: one short word per token."""
    tag = hashlib.blake2b(name.encode(), digest_size=2).hexdigest()
    tag = "".join(chr(ord("a") + int(c, 16)) for c in tag)  # 4 letters
    return " ".join(f"q{tag}{_letters(i)}" for i in range(tokens))


def _letters(i: int) -> str:
    out = ""
    while True:
        out += chr(ord("a") + i % 26)
        i //= 26
        if not i:
            return out
