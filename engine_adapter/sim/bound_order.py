"""Finish-order terms of the strict bound (``bound.py``): a lower bound on the k-th workflow
finish time that sees the engine shared -- one workflow's decode steps waiting behind other
workflows' prefill chunks and decodes -- and the GPU blocks requests hold while they run.

Contract: ``finish_bounds(needs, cost, concurrency, gpu_blocks, shared_s)`` returns
``lb[0..N-1]`` with ``lb[k-1] <= f_(k)``, the k-th smallest workflow finish time (time since
the replay started), in *every* replay of the workflows through a ``SimEngine`` with those
capacities, whatever the cache policy, provided each ``WorkflowNeeds`` field is a lower bound
on what that workflow needs in every such replay (``bound.py`` builds them and says why each
is). ``lb`` is non-decreasing. Let ``A_k`` be the first ``k`` workflows to finish; all of
their requests run within ``[0, f_(k)]``. Each term is a lower bound on ``f_(k)`` that
depends on ``A_k`` only through sums and maxima of its members' needs, so replacing those by
the ``k`` smallest values (sums) or the k-th smallest (maxima) over all workflows only
loosens it, whichever workflows ``A_k`` holds:

* **Critical path.** ``f_j >= critical_s_j`` (a workflow starts at 0 or later), so
  ``f_(k) >= max over A_k of critical_s >= `` the k-th smallest ``critical_s``.
* **Engine time.** The engine runs one iteration at a time and only adds up iteration
  costs, stalls (loads in flight, nothing else to run) and idle time, so
  ``f_(k) >=`` the cost of the iterations run by ``f_(k)``. ``CostModel.iteration_s`` is a
  sum: ``iteration_overhead_s`` once per iteration, ``decode_s_per_step`` once per iteration
  carrying a decode, and each request's own prefill and decode terms. Workflow ``j`` takes
  part in at least ``iterations_j`` distinct iterations, ``decode_iterations_j`` of them
  carrying its own decode; at most ``c = min(concurrency, N)`` workflows are live at once, so
  one iteration serves at most ``c`` of them. So by ``f_(k)`` the engine ran at least
  ``max(max_{A_k} iterations, sum_{A_k} iterations / c)`` iterations, likewise for decode
  iterations, plus the own terms ``sum_{A_k} variable_s``; the last finish also pays
  ``shared_s`` (blocks every holder computes, attributed to no workflow). Unlike the work
  bound in ``bound.py`` (which shares each iteration's fixed cost among ``c`` workflows and
  orders whole works), a workflow's decode steps are charged the others' prefill and decode
  work done meanwhile.
* **In-use memory.** Blocks a running request holds are never evicted, and at any time the
  blocks held or reserved by running requests fit in ``gpu_blocks`` (also with the
  ``ideal_cache``, which only frees blocks nobody uses). Request ``r`` holds at least
  ``m_r`` slots no other running request holds from its admission to its finish, which
  takes at least its iterations priced alone; ``memory_bs_j`` sums ``m_r`` times that over
  ``j``'s requests. Block-seconds within ``[0, f_(k)]`` are at most
  ``gpu_blocks * f_(k)``, so ``f_(k) >= sum_{A_k} memory_bs / gpu_blocks``.
* **Order.** ``f_(k) >= f_(k-1)``.

Not assumed: that the first to finish share the engine with the others (processor
sharing). A request whose loads are in flight is not batched, so a policy with a host tier
can hold a workflow back and let others finish first; the order statistics allow any order.

With ``concurrency=None`` (open loop) workflows start at their arrival times, not at 0, so
only the critical-path term is returned (``f_j`` is then measured from the first arrival
and the arrival offsets are not modelled here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from pbkv.engine_adapter.sim.cost_model import CostModel


@dataclass(frozen=True, slots=True)
class WorkflowNeeds:
    """Lower bounds on what one workflow needs in any replay (``bound.py`` says why)."""

    critical_s: float  # its critical path: rounds priced alone plus think time and pauses
    iterations: int  # engine iterations it takes part in
    decode_iterations: int  # of those, ones carrying its own decode
    variable_s: float  # its requests' own prefill and decode terms (no per-iteration costs)
    memory_bs: float  # block-seconds of GPU slots its requests hold exclusively


def finish_bounds(
    needs: Sequence[WorkflowNeeds],
    cost: CostModel,
    concurrency: int | None,
    gpu_blocks: int,
    shared_s: float = 0.0,
) -> list[float]:
    """``lb[k-1] <= f_(k)`` for k = 1..N; see the module docstring."""
    n = len(needs)
    if n == 0:
        raise ValueError("finish_bounds: no workflows")
    if gpu_blocks <= 0:
        raise ValueError(f"finish_bounds: gpu_blocks must be positive, got {gpu_blocks}")
    critical = sorted(x.critical_s for x in needs)
    if concurrency is None:
        return critical
    c = min(concurrency, n)
    iters = sorted(x.iterations for x in needs)
    decodes = sorted(x.decode_iterations for x in needs)
    iters_sum = _prefix(iters)
    decodes_sum = _prefix(decodes)
    variable_sum = _prefix(sorted(x.variable_s for x in needs))
    memory_sum = _prefix(sorted(x.memory_bs for x in needs))
    out: list[float] = []
    prev = 0.0
    for k in range(1, n + 1):
        engine = _engine_s(
            cost, c, iters[k - 1], iters_sum[k], decodes[k - 1], decodes_sum[k], variable_sum[k]
        )
        engine += shared_s if k == n else 0.0
        lb = max(prev, critical[k - 1], engine, memory_sum[k] / gpu_blocks)
        out.append(lb)
        prev = lb
    return out


def engine_time_s(needs: Sequence[WorkflowNeeds], cost: CostModel, concurrency: int) -> float:
    """The engine-time term for all ``N`` workflows (the last finish), ``shared_s`` aside."""
    return _engine_s(
        cost,
        min(concurrency, len(needs)),
        max(x.iterations for x in needs),
        sum(x.iterations for x in needs),
        max(x.decode_iterations for x in needs),
        sum(x.decode_iterations for x in needs),
        sum(x.variable_s for x in needs),
    )


def _engine_s(
    cost: CostModel, c: int, iters: int, iters_sum: int, decodes: int, decodes_sum: int, var: float
) -> float:
    """Iterations (at least the most any one member needs and the members' sum over ``c``)
    at their fixed costs, plus the members' own terms."""
    fixed = cost.iteration_overhead_s * max(iters, iters_sum / c)
    return fixed + cost.decode_s_per_step * max(decodes, decodes_sum / c) + var


def closed_loop_sum(lb: Sequence[float], concurrency: int) -> float:
    """A lower bound on the sum of latencies in the closed loop: a workflow starts exactly
    when another finishes, so the latencies sum to the last ``min(c, N)`` finish times."""
    n = len(lb)
    return sum(lb[max(n - concurrency, 0) :])


def least_finish(need: float, items: list[tuple[float, float]], capacity: float) -> float:
    """The least ``F >= 0`` with ``F + K(capacity * F) >= need``, ``K(B)`` the largest total
    saving of items ``(saving, hold > 0)`` taken fractionally with holds within ``B``."""
    if need <= 0:
        return 0.0
    paid = sorted(items, key=lambda x: -x[0] / x[1])
    taken = 0.0  # K at the start of the current item's segment
    used = 0.0  # block-seconds spent by then
    for saving, hold in paid:
        # On this item's segment F in [used / C, (used + hold) / C], K = taken +
        # (C F - used) * saving / hold: F + K grows at 1 + rate per second.
        rate = capacity * saving / hold
        f_lo, f_end = used / capacity, (used + hold) / capacity
        if f_end + taken + saving >= need:
            return max(f_lo, (need - taken + rate * f_lo) / (1 + rate))
        taken += saving
        used += hold
    return max(used / capacity, need - taken)


def _prefix(values: list) -> list:
    return [0, *accumulate(values)]
