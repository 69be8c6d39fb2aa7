"""A ``CachePlan`` as the simulated engine reads it.

Contract: the engine pulls the manager's latest plan at the start of every iteration
(``follow``). A missing plan, one flagged ``fallback_lru`` or one older than
``plan_max_age_s`` on the engine clock means no plan (plain LRU everywhere). A plan is turned
into a ``PlanView`` once per plan object: its lists as sets (``plan_order.named``,
``plan_order.prefetch_spared``, the host tier's named blocks), the host tier's drop cursor
(entries of ``host_drop_first`` that have left the tier are not looked at again under the
same plan) and the two cursors of the host tier's background passes,
which resume where the previous pass of the same plan stopped, so a long ``offload`` or
``prefetch`` list is scanned once per plan, not once per iteration. Nothing here decides an
order: that is ``cache_manager.plan_order``.
"""

from __future__ import annotations

from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.plan_order import named, prefetch_spared


class PlanView:
    """A plan's lists as sets, built once per plan, plus the background-pass cursors."""

    __slots__ = (
        "plan",
        "named",
        "offload",
        "prefetch",
        "host_named",
        "offload_cursor",
        "prefetch_cursor",
        "host_cursor",
    )

    def __init__(self, plan: CachePlan) -> None:
        self.offload_cursor = 0
        self.prefetch_cursor = 0
        self.host_cursor = 0  # host_drop_first entries before it have left the tier
        self.plan = plan
        self.named = named(plan)
        self.offload = set(plan.offload)
        self.prefetch = prefetch_spared(plan)
        self.host_named = frozenset(plan.host_drop_first)

    @property
    def offload_pending(self) -> bool:
        return self.offload_cursor < len(self.plan.offload)

    @property
    def prefetch_pending(self) -> bool:
        return self.prefetch_cursor < len(self.plan.prefetch)


def follow(
    view: PlanView | None, plan: CachePlan | None, now_s: float, max_age_s: float | None
) -> PlanView | None:
    """The view to use now: ``None`` for no plan, a stale or ``fallback_lru`` one; ``view``
    itself while ``plan`` is the plan it was built from; otherwise a fresh view."""
    stale = plan is not None and max_age_s is not None and now_s - plan.created_s > max_age_s
    if plan is None or plan.fallback_lru or stale:
        return None
    if view is None or view.plan is not plan:
        return PlanView(plan)
    return view
