"""The in-process link plans only when the manager has been told something new."""

from pbkv.engine_adapter.vllm.link import ManagerLink


class CountingManager:
    def __init__(self, fail: bool = False) -> None:
        self.plans = 0
        self.events: list[object] = []
        self.fail = fail

    def on_engine_event(self, event: object) -> None:
        self.events.append(event)

    def plan(self, engine_id: str) -> object:
        self.plans += 1
        if self.fail:
            raise RuntimeError("planner bug")
        return type("Plan", (), {"fallback_lru": False, "n": self.plans})()


def test_plans_are_recomputed_only_after_an_event():
    manager = CountingManager()
    link = ManagerLink(manager, "e0")
    first = link.latest_plan()
    assert link.latest_plan() is first and manager.plans == 1  # nothing new: same plan
    link.send("event")
    second = link.latest_plan()
    assert second is not first and second.n == 2 and manager.plans == 2
    assert link.latest_plan() is second and link.num_plans == 2


def test_a_failing_planner_means_plain_lru_until_the_next_event():
    manager = CountingManager(fail=True)
    link = ManagerLink(manager, "e0")
    assert link.latest_plan() is None and link.num_errors == 1
    assert link.latest_plan() is None and manager.plans == 1  # not retried without news
    manager.fail = False
    link.send("event")
    assert link.latest_plan() is not None
