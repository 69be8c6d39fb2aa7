"""The in-process link plans only when the manager has been told something new."""

import pytest

from pbkv.engine_adapter.vllm import links
from pbkv.engine_adapter.vllm.links import ManagerLink
from pbkv.engine_adapter.vllm.service_link import ServiceLink
from pbkv.registry import UnknownNameError


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


def test_link_kinds_are_chosen_by_name_and_an_unknown_name_lists_the_known_ones() -> None:
    assert links.LINKS.names() == ["in-process", "none", "service", "static"]
    assert type(links.LINKS.create("none", "e0", "t")) is links.NullLink
    assert type(links.LINKS.create("static", "e0", "t")) is links.StaticLink
    service = links.LINKS.create("service", "e0", "127.0.0.1:1")
    assert type(service) is ServiceLink and service.target == "127.0.0.1:1"
    assert service.client is None and service.resync_needed() is False  # not attached yet
    assert type(links.LINKS.create("in-process", "nobody", "t")) is links.NullLink
    mine = links.StaticLink()
    links.IN_PROCESS_LINKS["e9"] = mine
    try:
        assert links.LINKS.create("in-process", "e9", "t") is mine
    finally:
        del links.IN_PROCESS_LINKS["e9"]
    with pytest.raises(
        UnknownNameError, match="unknown engine link 'pigeon'; known: in-process, none, service"
    ):
        links.LINKS.get("pigeon")


def test_in_process_links_attach_as_a_no_op_and_never_ask_for_a_resync() -> None:

    for link in (links.NullLink(), links.StaticLink(), links.ManagerLink(object(), "e0")):
        assert link.attach(gpu_blocks=8, cpu_blocks=0, tokens_per_block=16) is None
        assert link.resync_needed() is False
