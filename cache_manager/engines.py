"""The manager's per-engine part: each attached engine's directory and planner, the block
events that change its directory, and the facts a policy ranks one of its blocks by."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set

from pbkv.cache_manager.block_directory import Block, BlockDirectory
from pbkv.cache_manager.config import DirectoryConfig
from pbkv.cache_manager.consumers import ConsumerIndex, GroupKey
from pbkv.cache_manager.errors import CacheManagerError
from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    RequestStarted,
    Tier,
)
from pbkv.cache_manager.planner import Planner, PlannerConfig
from pbkv.cache_manager.policies import BlockFacts, Policy
from pbkv.cache_manager.scorer import Outlook
from pbkv.cache_manager.workflows import RunningWorkflow

_CPU_ROOM_AGAIN = 0.9  # a full CPU tier counts as having room again below this share
TURNOVER_WINDOW_S = 30.0  # the turnover rate weighs the last ~this many seconds


class Turnover:
    """How fast blocks leave an engine's cache: ``note(n)`` when ``n`` blocks are no longer
    held by any tier; ``update(now_s)`` folds what was noted since the last update into an
    exponentially weighted rate (blocks/s, time constant ``window_s``). ``survival_s(C)`` =
    C / rate: how long a block nobody keeps lasts in a cache of C blocks at that turnover
    (``inf`` while nothing leaves). Time going backwards or standing still changes nothing."""

    __slots__ = ("window_s", "rate", "last_s", "pending")

    def __init__(self, window_s: float = TURNOVER_WINDOW_S) -> None:
        self.window_s = window_s
        self.rate = 0.0
        self.last_s: float | None = None
        self.pending = 0

    def note(self, n: int) -> None:
        self.pending += n

    def update(self, now_s: float) -> None:
        if self.last_s is None:
            self.last_s, self.pending = now_s, 0
            return
        dt = now_s - self.last_s
        if not dt > 0:
            return
        a = 1.0 - math.exp(-dt / self.window_s)
        self.rate = (1.0 - a) * self.rate + a * self.pending / dt
        self.last_s, self.pending = now_s, 0

    def survival_s(self, capacity: int) -> float:
        return capacity / self.rate if self.rate > 0 else math.inf


class ManagedEngine:
    """One attached engine: its block directory, its planner and whether its CPU tier is
    full. A ``shadow`` engine is a simulated stand-in for a stock engine that applies no plan
    (shadow mode, ``engine_adapter/shadow``): it is planned for like any other, but its
    requests and cached blocks stay out of the hit and cache figures, which are measured."""

    __slots__ = ("directory", "planner", "cpu_full", "shadow", "turnover", "host_turnover")

    def __init__(
        self,
        engine_id: str,
        policy: Policy,
        *,
        gpu_blocks: int,
        cpu_blocks: int,
        tokens_per_block: int,
        bytes_per_token: int,
        directory: DirectoryConfig,
        planner: PlannerConfig,
        shadow: bool = False,
    ) -> None:
        self.shadow = shadow
        self.directory = BlockDirectory(
            engine_id,
            gpu_blocks=gpu_blocks,
            cpu_blocks=cpu_blocks,
            tokens_per_block=tokens_per_block,
            bytes_per_token=bytes_per_token,
            max_users_per_block=directory.max_users_per_block,
        )
        self.planner = Planner(self.directory, policy, planner)
        self.cpu_full = False
        self.turnover = Turnover()  # blocks leaving both tiers
        self.host_turnover = Turnover()  # copies leaving the CPU tier

    def survival_s(self, now_s: float) -> float:
        """How long a block nobody keeps lasts in this engine's GPU and CPU tiers together at
        the current turnover (``Turnover``)."""
        self.turnover.update(now_s)
        d = self.directory
        return self.turnover.survival_s(d.gpu_blocks + d.cpu_blocks)

    def host_survival_s(self, now_s: float) -> float:
        """How long a copy written to the CPU tier now lasts there at the tier's current
        turnover (copies it drops per second; ``inf`` while it drops none)."""
        self.host_turnover.update(now_s)
        return self.host_turnover.survival_s(self.directory.cpu_blocks)

    def update_cpu_full(self) -> None:
        """Full at capacity, with room again only below ``_CPU_ROOM_AGAIN`` of it (hysteresis:
        a flip re-ranks every block, and a tier at capacity loses and gains one block per
        write-back). Policies value CPU copies by it (``BlockFacts.cpu_full``)."""
        d = self.directory
        if self.cpu_full:
            full = d.cpu_used >= _CPU_ROOM_AGAIN * d.cpu_blocks
        else:
            full = d.cpu_blocks > 0 and d.cpu_used >= d.cpu_blocks
        if full != self.cpu_full:
            self.cpu_full = full
            self.planner.dirty.update(b.block_hash for b in d)

    def apply_block_event(
        self, event: BlockStored | BlockRemoved | AllBlocksCleared, counts: dict[str, int]
    ) -> None:
        """Store, remove or clear blocks; count prefetched blocks and wasted prefetches."""
        d = self.directory
        match event:
            case BlockStored():
                if event.tokens_per_block != d.tokens_per_block:
                    raise CacheManagerError(
                        f"engine {d.engine_id!r}: tokens_per_block {event.tokens_per_block} "
                        f"differs from the attached {d.tokens_per_block}"
                    )
                was_cpu = {
                    h for h in event.block_hashes if (b := d.get(h)) and b.on_cpu and not b.on_gpu
                }
                stored = d.store(event.block_hashes, event.parent_hash, event.tier)
                if event.tier is Tier.GPU:
                    for b in stored:
                        if b.block_hash in was_cpu and b.block_hash in self.planner.last_prefetch:
                            b.prefetched = True
                            counts["prefetched"] += 1
            case BlockRemoved():
                gone = 0
                removed = d.remove(event.block_hashes, event.tier)
                if event.tier == Tier.CPU:
                    self.host_turnover.note(len(removed))
                for b in removed:
                    if b.prefetched and not b.on_gpu:
                        b.prefetched = False
                        counts["prefetch_wasted"] += 1
                    gone += not (b.on_gpu or b.on_cpu)
                self.turnover.note(gone)
            case AllBlocksCleared():
                if event.tier in (None, Tier.GPU):
                    counts["prefetch_wasted"] += sum(b.prefetched for b in d)
                d.clear(event.tier)

    def check_request(self, ev: RequestStarted) -> None:
        """Reject a ``RequestStarted`` whose counts are bad or that would grow the directory
        past its bound."""
        d = self.directory
        n = len(ev.block_hashes)
        for name in ("num_gpu_hit_blocks", "num_cpu_hit_blocks", "num_prompt_tokens"):
            value = getattr(ev, name)
            if not isinstance(value, int) or value < 0:
                raise CacheManagerError(
                    f"RequestStarted {ev.request_id!r}: {name} must be an int >= 0, got {value!r}"
                )
        if ev.num_gpu_hit_blocks + ev.num_cpu_hit_blocks > n:
            raise CacheManagerError(
                f"RequestStarted {ev.request_id!r}: num_gpu_hit_blocks + num_cpu_hit_blocks "
                f"({ev.num_gpu_hit_blocks} + {ev.num_cpu_hit_blocks}) exceeds its {n} blocks"
            )
        # Requests hold at most gpu_blocks blocks that nothing stored yet (a running request
        # is on the GPU), so stored and in-use blocks stay within 2 x gpu_blocks + cpu_blocks.
        # A block no tier holds also stays while a descendant does (the chain's structure):
        # long agent contexts whose middle was evicted keep ~40% more (bench headroom's
        # long-agent preset), so the bound allows as many again.
        limit = 2 * (2 * d.gpu_blocks + d.cpu_blocks)
        unknown = sum(1 for h in ev.block_hashes if d.get(h) is None)
        if unknown and len(d) + unknown > limit:
            raise CacheManagerError(
                f"RequestStarted {ev.request_id!r}: {unknown} unknown blocks would grow engine "
                f"{d.engine_id!r}'s directory past 2 x (2 x gpu_blocks + cpu_blocks) ({limit})"
            )


def facts_fn(
    eng: ManagedEngine,
    consumers: ConsumerIndex,
    workflows: Mapping[str, RunningWorkflow],
    ended: Set[str] | Mapping[str, None],
    groups: Mapping[GroupKey, Outlook | None],
    by_app: Mapping[str, Mapping[str, None]],
) -> Callable[[Block, float], BlockFacts]:
    """What the policy ranks a block of ``eng`` by: its consumers' outlooks (a workflow's own,
    or its agent group's for a shared prefix), whether it is dead, where it sits."""
    cpu_full = eng.cpu_full
    tpb = eng.directory.tokens_per_block

    def facts(b: Block, now_s: float) -> BlockFacts:
        h = b.block_hash
        outlooks: list[Outlook] = []
        in_groups = consumers.groups_of(h)
        num_consumers = 0
        group_agents: set[str] = set()
        for g in in_groups:
            o = groups.get(g)
            if o is not None:
                outlooks.append(o)
            num_consumers += len(by_app.get(g[0], ()))
            group_agents.add(g[1])
        for wid, agent in consumers.consumers_of(h):
            if agent in group_agents:
                continue  # already in the group's outlook
            num_consumers += 1
            o = workflows[wid].outlooks.get(agent)
            if o is not None:
                outlooks.append(o)
        dead = (
            not outlooks
            and bool(b.users)
            and not consumers.possibly_shared(h)
            and all(wid in ended for wid, _ in b.users)
        )
        app_running, shared_end = 0, None
        if not outlooks and not dead:
            # Unclaimed: how many running workflows could still reach it (its apps').
            apps = consumers.apps_of(h)
            apps.update(workflows[wid].app for wid, _ in b.users if wid in workflows)
            app_running = sum(len(by_app.get(app, ())) for app in apps)
            shared = [len(consumers.group_blocks(g)) for g in in_groups]
            shared_end = max(shared) * tpb if shared else None
        # tail_depth: how far the prompts through this block reach (prefix-aware cost).
        return BlockFacts(
            b,
            b.depth * tpb,
            tpb,
            (b.tail_depth + 1) * tpb,
            outlooks,
            dead,
            now_s,
            num_consumers,
            cpu_full,
            app_running,
            shared_end,
        )

    return facts
