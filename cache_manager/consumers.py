"""Who will use a cached block next.

A *consumer* is a (workflow, agent) pair: its next request extends the prompt of its last
request, so every block of that last prompt is one it will probably read again. Blocks that the
same agent's prompts share across workflows (the agent's system prompt, an app preamble) are
also consumed by an *agent group* (app, agent): that agent in every active workflow of the app,
including ones not yet at that agent::

    wf1/Coder   last prompt: | sys:Coder | hist:wf1 ........ |
    wf2/Coder   last prompt: | sys:Coder | hist:wf2 ... |
                             '-- shared prefix of (app, Coder): consumers = group (app, Coder)

The shared prefix of a group is the longest common prefix of the agent's prompts seen in two
different workflows (one workflow alone cannot tell the system prompt from its history). The
index is engine-agnostic (block hashes are content hashes) and only maps hashes; the block
directories hold the blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

ConsumerKey = tuple[str, str]  # (workflow_id, agent)
GroupKey = tuple[str, str]  # (app, agent)

_EMPTY: frozenset = frozenset()


class _Group:
    __slots__ = ("first_workflow", "candidate", "shared")

    def __init__(self, workflow_id: str, prompt: tuple[bytes, ...]) -> None:
        self.first_workflow = workflow_id
        self.candidate = prompt  # the first prompt, until a second workflow confirms a prefix
        self.shared: tuple[bytes, ...] | None = None


class ConsumerIndex:
    def __init__(self) -> None:
        self._prompts: dict[ConsumerKey, tuple[bytes, ...]] = {}
        self._by_workflow: dict[str, set[str]] = {}  # workflow -> agents with a prompt
        self._consumers: dict[bytes, set[ConsumerKey]] = {}
        self._groups: dict[GroupKey, _Group] = {}
        self._group_of: dict[bytes, set[GroupKey]] = {}
        # Blocks of a group's first prompt while no second workflow has confirmed what is
        # shared: they may be a system prompt, so they are never taken for dead.
        self._candidate_of: dict[bytes, set[GroupKey]] = {}

    # ------------------------------------------------------------------ queries
    def consumers_of(self, block_hash: bytes) -> set[ConsumerKey] | frozenset:
        return self._consumers.get(block_hash, _EMPTY)

    def groups_of(self, block_hash: bytes) -> set[GroupKey] | frozenset:
        return self._group_of.get(block_hash, _EMPTY)

    def possibly_shared(self, block_hash: bytes) -> bool:
        return block_hash in self._group_of or block_hash in self._candidate_of

    def apps_of(self, block_hash: bytes) -> set[str]:
        """The apps of the agent groups the block may be a shared prefix of (confirmed or
        candidate)."""
        groups = self._group_of.get(block_hash, _EMPTY) | self._candidate_of.get(block_hash, _EMPTY)
        return {app for app, _ in groups}

    def prompt_of(self, key: ConsumerKey) -> tuple[bytes, ...]:
        return self._prompts.get(key, ())

    def agents_of(self, workflow_id: str) -> set[str]:
        return self._by_workflow.get(workflow_id, set())

    def workflow_blocks(self, workflow_id: str) -> set[bytes]:
        """Every block some consumer of this workflow will extend."""
        out: set[bytes] = set()
        for agent in self._by_workflow.get(workflow_id, ()):
            out.update(self._prompts[(workflow_id, agent)])
        return out

    def group_blocks(self, group: GroupKey) -> tuple[bytes, ...]:
        g = self._groups.get(group)
        return () if g is None or g.shared is None else g.shared

    def app_blocks(self, app: str) -> set[bytes]:
        """Every block that may be a shared prefix of one of the app's agent groups."""
        out: set[bytes] = set()
        for (group_app, _), g in self._groups.items():
            if group_app == app:
                out.update(g.shared or g.candidate)
        return out

    def groups(self) -> list[GroupKey]:
        return list(self._groups)

    # ------------------------------------------------------------------ updates
    def record_prompt(
        self, workflow_id: str, app: str, agent: str, block_hashes: Sequence[bytes]
    ) -> set[bytes]:
        """``agent`` of ``workflow_id`` sent a prompt with these blocks; returns the blocks
        whose consumers changed."""
        key = (workflow_id, agent)
        prompt = tuple(block_hashes)
        changed = self._drop_prompt(key)
        self._prompts[key] = prompt
        self._by_workflow.setdefault(workflow_id, set()).add(agent)
        for h in prompt:
            self._consumers.setdefault(h, set()).add(key)
        changed.update(prompt)
        changed.update(self._update_group((app, agent), workflow_id, prompt))
        return changed

    def end_workflow(self, workflow_id: str) -> set[bytes]:
        """Forget the workflow's consumers; returns the blocks whose consumers changed."""
        changed: set[bytes] = set()
        for agent in self._by_workflow.pop(workflow_id, set()):
            changed |= self._drop_prompt((workflow_id, agent))
        return changed

    # ------------------------------------------------------------------ internals
    def _drop_prompt(self, key: ConsumerKey) -> set[bytes]:
        old = self._prompts.pop(key, ())
        for h in old:
            users = self._consumers.get(h)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._consumers[h]
        return set(old)

    def _update_group(
        self, group: GroupKey, workflow_id: str, prompt: tuple[bytes, ...]
    ) -> set[bytes]:
        g = self._groups.get(group)
        if g is None:
            self._groups[group] = _Group(workflow_id, prompt)
            self._set_candidate(group, (), prompt)
            return set()
        if g.shared is None:
            if workflow_id == g.first_workflow:
                self._set_candidate(group, g.candidate, prompt)
                g.candidate = prompt
                return set()
            shared = prompt[: _common_prefix(g.candidate, prompt)]
            self._set_candidate(group, g.candidate, ())
            g.candidate = ()
        else:
            shared = g.shared[: _common_prefix(g.shared, prompt)]
            if len(shared) == len(g.shared):
                return set()
        old = g.shared or ()
        for h in old[len(shared) :]:
            owners = self._group_of.get(h)
            if owners is not None:
                owners.discard(group)
                if not owners:
                    del self._group_of[h]
        for h in shared:
            self._group_of.setdefault(h, set()).add(group)
        g.shared = shared
        return set(old) ^ set(shared)

    def _set_candidate(self, group: GroupKey, old: Sequence[bytes], new: Sequence[bytes]) -> None:
        for h in old:
            owners = self._candidate_of.get(h)
            if owners is not None:
                owners.discard(group)
                if not owners:
                    del self._candidate_of[h]
        for h in new:
            self._candidate_of.setdefault(h, set()).add(group)

    def own_blocks(self, app: str, workflow_id: str, agent: str) -> Sequence[bytes]:
        """The consumer's last prompt without the agent's shared prefix (those blocks rank by
        the agent group's outlook, re-marked when that moves)."""
        prompt = self.prompt_of((workflow_id, agent))
        shared = self.group_blocks((app, agent))
        n = len(shared)
        if n and len(prompt) >= n and prompt[n - 1] == shared[-1]:
            return prompt[n:]
        return prompt


def _common_prefix(a: Sequence[bytes], b: Sequence[bytes]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
