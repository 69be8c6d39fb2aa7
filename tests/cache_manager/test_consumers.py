from __future__ import annotations

from pbkv.cache_manager.consumers import ConsumerIndex


def hs(*names: str) -> tuple[bytes, ...]:
    return tuple(n.encode() for n in names)


def test_consumers_follow_the_last_prompt() -> None:
    ix = ConsumerIndex()
    # w1/A's prompt: every block is consumed by (w1, A).
    assert ix.record_prompt("w1", "app", "A", hs("s0", "s1", "x")) == set(hs("s0", "s1", "x"))
    assert ix.consumers_of(b"x") == {("w1", "A")}
    # A's next prompt extends s0 s1 but not x: x loses its consumer.
    changed = ix.record_prompt("w1", "app", "A", hs("s0", "s1", "y"))
    assert changed == set(hs("s0", "s1", "x", "y"))
    assert ix.consumers_of(b"x") == frozenset() and ix.consumers_of(b"y") == {("w1", "A")}
    assert ix.workflow_blocks("w1") == set(hs("s0", "s1", "y"))
    # Only one workflow has run A: its prompt may be A's system prompt (a candidate).
    assert ix.possibly_shared(b"y") and ix.groups_of(b"s0") == frozenset()


def test_agent_group_shared_prefix_is_confirmed_by_a_second_workflow() -> None:
    ix = ConsumerIndex()
    ix.record_prompt("w1", "app", "A", hs("s0", "s1", "x"))
    # w2's A shares s0 s1: that is A's system prompt, consumed by group (app, A).
    changed = ix.record_prompt("w2", "app", "A", hs("s0", "s1", "z"))
    assert set(hs("s0", "s1")) <= changed
    assert ix.group_blocks(("app", "A")) == hs("s0", "s1")
    assert ix.groups_of(b"s1") == {("app", "A")}
    assert not ix.possibly_shared(b"x") and not ix.possibly_shared(b"z")
    # A third workflow shares only s0: the shared prefix shrinks.
    ix.record_prompt("w3", "app", "A", hs("s0", "q"))
    assert ix.group_blocks(("app", "A")) == hs("s0")
    assert ix.groups_of(b"s1") == frozenset()
    # A workflow ending drops its consumers, not the group.
    assert ix.end_workflow("w1") == set(hs("s0", "s1", "x"))
    assert ix.consumers_of(b"s0") == {("w2", "A"), ("w3", "A")}
    assert ix.group_blocks(("app", "A")) == hs("s0")
    assert ix.agents_of("w1") == set()
