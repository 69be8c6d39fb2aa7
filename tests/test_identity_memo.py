"""IdentityMemo: a value found again only for the very same object and an equal extra."""

from __future__ import annotations

import pytest

from pbkv.identity_memo import IdentityMemo


def test_a_hit_needs_the_same_object_and_an_equal_extra() -> None:
    memo: IdentityMemo[str] = IdentityMemo(max_entries=2)
    a, b = tuple(["x", 1]), tuple(["x", 1])  # equal, not the same object
    assert memo.put(a, 4, "derived") == "derived"
    assert memo.get(a, 4) == "derived"
    assert memo.get(a, 5) is None  # another extra
    assert memo.get(b, 4) is None  # an equal but other object
    assert len(memo) == 1


def test_at_max_entries_everything_is_forgotten_at_once() -> None:
    memo: IdentityMemo[int] = IdentityMemo(max_entries=2)
    a, b, c = ("a",), ("b",), ("c",)
    memo.put(a, None, 1)
    memo.put(b, None, 2)
    memo.put(c, None, 3)  # the third: a and b forgotten
    assert (memo.get(a), memo.get(b), memo.get(c), len(memo)) == (None, None, 3, 1)


def test_an_entry_keeps_its_object_alive_so_its_id_is_not_reused() -> None:
    memo: IdentityMemo[str] = IdentityMemo()
    memo.put(tuple(range(100)), None, "v")
    # The entry holds the tuple: a new object built now cannot get its id and its value.
    assert all(memo.get(tuple(range(100))) is None for _ in range(100))


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries must be >= 1, got 0"):
        IdentityMemo(max_entries=0)
