"""A lower bound on mean workflow latency and on recomputed prompt tokens that no cache policy
can beat in the simulated engine at given GPU and CPU capacities (computed offline).

Contract: ``latency_bound(workflows, prompts, cost, engine, replay)`` returns a ``Bound``
whose ``mean_latency_s`` is <= the mean workflow latency and whose ``recomputed_tokens`` is
<= the recomputed prompt tokens of *every* replay of ``workflows`` through a ``SimEngine``
with ``engine``'s capacities and batching limits, under ``replay``'s closed loop and think
time, whatever the policy (plans, prefetch, offload, schedule of transfers) -- transfers are
priced at zero. It is a relaxation, not a simulation; each step below only loosens:

* **Hits.** A prompt block can be a hit (GPU or CPU) only if some other request's prompt holds
  it: a step of another workflow, a step of an earlier round of the same workflow, or a
  sibling step of the same round. A hit is a prefix (lookup stops at the first miss) and, as
  in vLLM, the last prompt token is always computed. ``h_max`` is the longest such prefix.
  Every request computes at least ``P - tokens_per_block * h_max`` tokens, and a block within
  the ``h_max`` of every request holding it is still computed once (by the first of them to
  run): their sum is ``recomputed_tokens``.
* **One request.** Its latency is at least the iterations it takes part in, each priced
  alone (``CostModel.iteration_s`` adds terms, so a batch only costs more): at least
  ``ceil(computed / max_batch_tokens)`` prefill iterations (overhead each) plus the chunk
  costs, whose sum is independent of chunking (each computed token at 1-based position ``p``
  costs ``prefill_s_per_token + p * prefill_s_per_token_ctx``), then ``output - 1`` decode
  iterations at batch size 1.
* **Critical path.** A workflow's latency is at least the sum over rounds of its slowest step
  plus ``think_time_s`` between rounds, and with ``trace_pauses`` the trace's pauses
  (``round_pauses``).
* **Work.** The engine runs one iteration at a time and an iteration costs at least the sum
  of its requests' own terms (prefill compute, per-sequence decode and KV reads; overheads
  are shared: each workflow is charged 1/c of those of the iterations its rounds need at
  least, as at most c workflows share one). So the k-th workflow to finish does so at
  ``f_k >= S_k``, the sum
  of the k smallest per-workflow works. In the closed loop a workflow starts exactly when
  another finishes, so the latencies sum to ``f_{N-c+1} + ... + f_N`` (``c`` = concurrency).
* **Capacity.** At any time the GPU and CPU tiers together hold at most ``C = gpu + cpu``
  distinct blocks. A hit on a block no other workflow's prompt holds (a *private* block,
  none of its round's siblings either) needs it held since the earlier round that used it:
  at least that step's decode, the rounds in between (their critical paths) and the think
  times. Those holds fit in ``C * f_N`` block-seconds. The work of all hits but private ones
  less the best fractional choice of private hits for that budget (``K``, greedy by saving
  per block-second) bounds ``f_N``: ``f_N >= F*``, the least ``F`` with
  ``F + K(C * F) >= W_0``. Then ``sum of latencies >= S_{N-c+1} + ... + S_{N-1} + F*``.
  Likewise for critical paths: the first ``q = N - c + 1`` workflows to finish held their
  private hits within ``[0, f_q]`` and ``f_q <= (sum of latencies) / min(c, N)``; leaving out
  the ``N - q`` workflows whose private hits shorten their critical paths most, the same
  knapsack over critical-path savings gives the least sum of latencies.

* **Finish order** (``bound_order.py``, which proves each term from the needs below). Per
  workflow: its critical path (above); the iterations it takes part in (per round, its
  longest request's prefill and decode iterations: the rounds run one after another, and a
  request's prefill iterations, at least ``ceil(computed / max_batch_tokens)``, come before
  its ``output - 1`` decode iterations, which every iteration carries until it finishes);
  those carrying its decode (per round, the most ``output - 1``); its own terms (the work
  above, first computes of its private blocks included); and the block-seconds of GPU slots
  its requests hold that no other running request can (output and partial last block, and
  prompt blocks of no other workflow and no sibling), each for at least its iterations
  priced alone. The k-th workflow to finish then does so no earlier than the k-th smallest
  critical path, than the fixed costs of the iterations the k cheapest need (the most any
  one of them needs, and their sum over ``c``) plus the k smallest own terms, and than the k
  smallest block-seconds over ``gpu_blocks``; so each workflow's decode steps are charged
  the prefill chunks and decodes of the others run meanwhile, which the work bound's 1/c
  share of fixed costs misses. The last finish also meets the capacity relaxation above
  with these engine terms. Latencies sum to the last ``c`` finishes as above.

``mean_latency_s`` is the largest of the critical-path, work and finish-order bounds over the
number of workflows. Not modelled (so not needed): planner time and plan delay
(``charge_planner`` only adds time), serial copies (``transfer_overlap`` < 1 only adds
time), stalls (loads in flight only add time). Open-loop replays (``concurrency=None``) get
the critical-path bound only. The engine's ``ideal_cache`` mode holds more than ``C`` blocks,
so only the capacity-free parts bind it (the in-use memory term does: ideal counts blocks in
use against ``gpu_blocks`` too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pbkv.engine_adapter.replay import round_pauses
from pbkv.engine_adapter.sim.bound_order import (
    WorkflowNeeds,
    closed_loop_sum,
    engine_time_s,
    finish_bounds,
    least_finish,
)
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.records import EngineConfig
from pbkv.engine_adapter.sim.replay import PromptCache, ReplayConfig
from pbkv.trace import Workflow, step_groups


@dataclass(frozen=True, slots=True)
class Bound:
    mean_latency_s: float  # max(critical_path_mean_s, work_mean_s, finish_order_mean_s)
    recomputed_tokens: int
    critical_path_mean_s: float
    work_mean_s: float  # closed loop only (0 otherwise)
    finish_order_mean_s: float  # bound_order.py; closed loop only (0 otherwise)
    capacity_binds: bool  # the capacity term raised the work bound
    num_workflows: int
    capacity_blocks: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Step:
    workflow: int
    round: int
    prompt: int
    output: int
    hashes: tuple[bytes, ...]
    limit: int  # blocks a lookup may hit (the last prompt token is always computed)
    h_max: int = 0


def prefill_compute_s(cost: CostModel, start: int, end: int) -> float:
    """Compute time of prompt tokens ``start + 1 .. end`` (1-based), however chunked."""
    n = end - start
    if n <= 0:
        return 0.0
    positions = (start + 1 + end) * n / 2
    return n * cost.prefill_s_per_token + positions * cost.prefill_s_per_token_ctx


def decode_own_s(cost: CostModel, prompt: int, output: int) -> float:
    """The request's own decode terms: ``output - 1`` steps at contexts prompt+1 .. ."""
    k = max(output - 1, 0)
    ctx = k * prompt + k * (k + 1) / 2
    return k * cost.decode_s_per_seq + ctx * cost.decode_s_per_ctx_token


def decode_alone_s(cost: CostModel, prompt: int, output: int) -> float:
    """Its decode iterations priced alone (each also pays overhead and the weights read)."""
    k = max(output - 1, 0)
    shared = k * (cost.iteration_overhead_s + cost.decode_s_per_step)
    return shared + decode_own_s(cost, prompt, output)


def _iterations(s: _Step, tpb: int, max_batch_tokens: int) -> int:
    """Iterations the request takes part in at least: prefill chunks, then decode steps."""
    return -(-(s.prompt - s.h_max * tpb) // max_batch_tokens) + max(s.output - 1, 0)


def _request_alone_s(cost: CostModel, s: _Step, tpb: int, max_batch_tokens: int) -> float:
    hit = s.h_max * tpb
    iters = -(-(s.prompt - hit) // max_batch_tokens)
    return (
        iters * cost.iteration_overhead_s
        + prefill_compute_s(cost, hit, s.prompt)
        + decode_alone_s(cost, s.prompt, s.output)
    )


def _exclusive_block_s(
    rounds: list[list[_Step]], alone: list[list[float]], shared: set[bytes], tpb: int
) -> float:
    """Per request, the GPU slots no other running request can hold (its output and partial
    last block, and prompt blocks no other workflow and no sibling holds: another round of
    the same workflow never runs beside it) times its iterations priced alone (from its
    admission to its finish it holds them); summed over the workflow."""
    total = 0.0
    for steps, times in zip(rounds, alone, strict=True):
        counts = _sibling_counts(steps)
        for s, t in zip(steps, times, strict=True):
            slots = -(-(s.prompt + s.output) // tpb)
            mine = slots - sum(1 for h in s.hashes if h in shared or counts[h] > 1)
            total += mine * t
    return total


def _steps(
    workflows: Sequence[Workflow], prompts: PromptCache
) -> tuple[list[list[list[_Step]]], set[bytes]]:
    """Per workflow, per round, its steps with ``h_max`` set (the hit rule above); and the
    blocks in the prompts of more than one workflow."""
    tpb = prompts.tokens_per_block
    out: list[list[list[_Step]]] = []
    owners: dict[bytes, int] = {}  # block -> the first workflow holding it
    shared: set[bytes] = set()
    for wi, w in enumerate(workflows):
        rounds: list[list[_Step]] = []
        for ri, group in enumerate(step_groups(w)):
            steps = []
            for i in group:
                tokens, hashes = prompts.get(w, i)
                limit = min(len(hashes), (len(tokens) - 1) // tpb)
                steps.append(_Step(wi, ri, len(tokens), w.steps[i].output_tokens, hashes, limit))
                for h in hashes:
                    if owners.setdefault(h, wi) != wi:
                        shared.add(h)
            rounds.append(steps)
        out.append(rounds)
    for rounds in out:
        seen: set[bytes] = set()  # blocks of earlier rounds of this workflow
        for steps in rounds:
            counts = _sibling_counts(steps)
            for s in steps:
                h = 0
                while h < s.limit and (
                    s.hashes[h] in shared or s.hashes[h] in seen or counts[s.hashes[h]] > 1
                ):
                    h += 1
                s.h_max = h
            for s in steps:
                seen.update(s.hashes)
    return out, shared


def _sibling_counts(steps: list[_Step]) -> dict[bytes, int]:
    """Block -> how many steps of the round hold it."""
    counts: dict[bytes, int] = {}
    for s in steps:
        for h in set(s.hashes):
            counts[h] = counts.get(h, 0) + 1
    return counts


def latency_bound(
    workflows: Sequence[Workflow],
    prompts: PromptCache,
    cost: CostModel,
    engine: EngineConfig,
    replay: ReplayConfig,
) -> Bound:
    """See the module docstring."""
    if not workflows:
        raise ValueError("latency_bound: no workflows")
    if prompts.tokens_per_block != engine.tokens_per_block:
        raise ValueError("latency_bound: PromptCache and engine disagree on tokens_per_block")
    tpb, think = engine.tokens_per_block, replay.think_time_s
    per_wf, shared = _steps(workflows, prompts)
    n = len(workflows)
    recomputed = 0
    cps: list[float] = []  # per workflow: its critical path
    works: list[float] = []  # per workflow: its requests' own terms
    memory: list[float] = []  # per workflow: exclusive block-seconds (bound_order.py)
    base_work = 0.0  # every hit but private ones (W_0)
    items: list[tuple[float, float]] = []  # (saving, hold) of private hits
    penalties: list[float] = []  # per workflow: its critical-path savings of private hits
    cp_items: list[tuple[float, float]] = []  # (critical-path saving, hold) of private hits
    for wi, rounds in enumerate(per_wf):
        alone = [
            [_request_alone_s(cost, s, tpb, engine.max_batch_tokens) for s in st] for st in rounds
        ]
        round_cp = [max(a) for a in alone]
        critical = [a.index(max(a)) for a in alone]
        gaps = [0.0] + [think] * (len(rounds) - 1)  # waited before each round
        if replay.trace_pauses:
            gaps = [g + p for g, p in zip(gaps, round_pauses(workflows[wi]), strict=True)]
        cps.append(sum(round_cp) + sum(gaps))
        memory.append(_exclusive_block_s(rounds, alone, shared, tpb))
        work = 0.0
        for steps in rounds:
            for s in steps:
                recomputed += s.prompt - s.h_max * tpb
                work += prefill_compute_s(cost, s.h_max * tpb, s.prompt)
                work += decode_own_s(cost, s.prompt, s.output)
        works.append(work)
        base_work += work
        penalty = 0.0
        for saving, cp_saving, hold in _holds(rounds, round_cp, gaps, shared, cost, tpb, critical):
            if hold <= 0:  # held for no time: free, as the capacity-free hits
                continue
            base_work += saving
            items.append((saving, hold))
            if cp_saving > 0:
                penalty += cp_saving
                cp_items.append((cp_saving, hold))
        penalties.append(penalty)
    cp_total = sum(cps)
    first_costs = _first_computes(per_wf, shared, cost, tpb)
    recomputed += tpb * len(first_costs)
    shared_s = 0.0  # first computes of blocks more than one workflow holds
    for wi, extra in first_costs:
        base_work += extra
        if wi >= 0:
            works[wi] += extra
        else:
            shared_s += extra
    needs = [
        WorkflowNeeds(
            cps[wi],
            sum(max(_iterations(s, tpb, engine.max_batch_tokens) for s in st) for st in rounds),
            sum(max(max(s.output - 1, 0) for s in st) for st in rounds),
            works[wi],
            memory[wi],
        )
        for wi, rounds in enumerate(per_wf)
    ]
    # Every iteration pays the overhead, and one with a decode the weights read; at most c
    # workflows run at once, so a workflow's share of those is at least 1/c of its own.
    if replay.concurrency is not None:
        share = 1 / min(replay.concurrency, n)
        for wi, need in enumerate(needs):
            extra = share * (
                cost.iteration_overhead_s * need.iterations
                + cost.decode_s_per_step * need.decode_iterations
            )
            works[wi] += extra
            base_work += extra
    cp_mean = cp_total / n
    work_mean = 0.0
    order_mean = 0.0
    binds = False
    c = replay.concurrency
    if c is not None:
        works.sort()
        prefix = [0.0]
        for wv in works:
            prefix.append(prefix[-1] + wv)
        first = max(n - c + 1, 1)
        tail = sum(prefix[k] for k in range(first, n))  # S_k, k = N-c+1 .. N-1
        capacity = engine.gpu_blocks + engine.cpu_blocks
        f_star = least_finish(base_work, items, capacity)
        free_total = base_work - sum(saving for saving, _ in items)  # every private hit
        free_mean = max(cp_mean, (tail + max(free_total, prefix[n])) / n)  # without capacity
        work_mean = (tail + max(f_star, prefix[n])) / n
        # Critical path with capacity: the first q = N-c+1 to finish (any q workflows) held
        # their private hits within [0, f_q], and f_q <= (sum of latencies) / min(c, N).
        dropped = sum(sorted(penalties, reverse=True)[: n - first])
        need = cp_total + sum(penalties) - dropped
        cp_cap = least_finish(need, cp_items, capacity / min(c, n))
        cp_mean = max(cp_mean, cp_cap / n)
        # Finish order (bound_order.py), the last finish also raised by capacity as above,
        # with the engine's fixed costs counted by iterations instead of shared among c.
        lb = finish_bounds(needs, cost, c, engine.gpu_blocks, shared_s)
        free_mean = max(free_mean, closed_loop_sum(lb, c) / n)
        last = engine_time_s(needs, cost, c) + shared_s + sum(saving for saving, _ in items)
        lb[-1] = max(lb[-1], least_finish(last, items, capacity))
        order_mean = closed_loop_sum(lb, c) / n
        binds = max(cp_mean, work_mean, order_mean) > free_mean * (1 + 1e-12)
    return Bound(
        mean_latency_s=max(cp_mean, work_mean, order_mean),
        recomputed_tokens=recomputed,
        critical_path_mean_s=cp_mean,
        work_mean_s=work_mean,
        finish_order_mean_s=order_mean,
        capacity_binds=binds,
        num_workflows=n,
        capacity_blocks=engine.gpu_blocks + engine.cpu_blocks,
    )


def _first_computes(
    per_wf: list[list[list[_Step]]], shared: set[bytes], cost: CostModel, tpb: int
) -> list[tuple[int, float]]:
    """Blocks within ``h_max`` of every request holding them: the first of those requests to
    be admitted finds the block absent and computes it. Per such block (its position is fixed
    by its hash): (its workflow, or -1 when shared, its compute time)."""
    always: dict[bytes, tuple[int, int]] = {}  # block -> (workflow or -1, index)
    never: set[bytes] = set()
    for wi, rounds in enumerate(per_wf):
        for steps in rounds:
            for s in steps:
                for i, h in enumerate(s.hashes):
                    if i >= s.h_max:
                        never.add(h)
                    elif h not in never:
                        always[h] = (-1 if h in shared else wi, i)
    return [
        (wi, prefill_compute_s(cost, i * tpb, (i + 1) * tpb))
        for h, (wi, i) in always.items()
        if h not in never
    ]


def _holds(
    rounds: list[list[_Step]],
    round_cp: list[float],
    gaps: list[float],
    shared: set[bytes],
    cost: CostModel,
    tpb: int,
    critical: list[int],
) -> list[tuple[float, float, float]]:
    """(saving, critical-path saving, hold block-seconds) of each hit within ``h_max`` on a
    private block whose round has no sibling holding it: held from the last earlier round
    that used it. The critical-path saving is the work saving on the round's critical step
    (``critical``: its index, the step slowest alone), 0 on the others."""
    last_use: dict[bytes, tuple[int, float]] = {}  # block -> (round, min decode after it)
    out: list[tuple[float, float, float]] = []
    for ri, steps in enumerate(rounds):
        counts = _sibling_counts(steps)
        for si, s in enumerate(steps):
            for b in range(s.h_max):
                h = s.hashes[b]
                if h in shared or counts[h] > 1:
                    continue
                pr, decode_after = last_use[h]  # h_max: an earlier round used it
                hold = decode_after + sum(round_cp[pr + 1 : ri]) + sum(gaps[pr + 1 : ri + 1])
                saving = prefill_compute_s(cost, b * tpb, (b + 1) * tpb)
                out.append((saving, saving if si == critical[ri] else 0.0, hold))
        for s in steps:  # the earliest a block of this round is no longer in use
            after = decode_alone_s(cost, s.prompt, s.output)
            for h in set(s.hashes):
                prev = last_use.get(h)
                last_use[h] = (ri, min(after, prev[1]) if prev and prev[0] == ri else after)
    return out
