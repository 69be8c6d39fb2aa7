"""The workflow "apps" of the synthetic workloads: who is called, in which order, saying what.

An app is a small pure function ``plan(rng, knobs) -> Plan``: the task text and the rounds of
agent calls with their output texts. Sizes, segments and times are added by ``synth.py``
(mechanism apart from policy).

Dynamic apps (PBKV's setting) choose their path from the task text and from earlier outputs,
so the live context carries information a history-only model cannot see:

    app       structure                                       the cue
    support   triage -> specialists (fan-out) [-> supervisor]  topic words in the task pick the
              -> responder [-> triage ... on follow-up]        specialists; "urgent" adds the
                                                               supervisor; "follow-up" loops
    codegen   planner -> coder -> reviewer -> (coder ->        reviewer says "approved" or
              reviewer)* -> tester [-> coder ...] [-> docs]     "changes requested"; tester
                                                               "passed"/"failed"; task
                                                               "document" adds docs_writer
    tooluse   assistant -> (tool -> assistant)* [-> verifier]  assistant's "Action: <tool>" or
                                                               "Final Answer"; task "cite"
    research  lead -> researcher x k (fan-out) -> synthesizer  task lists k subtopics; critic
              -> critic -> (researcher -> synthesizer ->       says "gap found" or "coverage
              critic)* -> writer                               complete"

``noise`` is the probability that a cue in an output text is flipped or that a router
misroutes, so text predicts the next agent well but not perfectly.

Static apps (KVFlow's setting) are fixed pipelines: every workflow of an app calls the same
agents in the same order; the cue is irrelevant.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class Call(NamedTuple):
    """One agent call: the agent and the text it outputs."""

    agent: str
    output_text: str
    phase: str | None = None


Round = tuple[Call, ...]  # more than one call: a parallel group (fan-out)


class Plan(NamedTuple):
    task: str
    rounds: list[Round]


@dataclass(frozen=True, slots=True)
class PlanKnobs:
    """What an app's control flow depends on besides its random draws."""

    max_fanout: int = 4  # largest parallel group; 1 runs fan-out steps one after another
    max_loops: int = 4  # bound on every loop (review rounds, tool calls, research gaps)
    noise: float = 0.05  # P(a text cue is flipped / a router misroutes)


AppPlanner = Callable[[random.Random, PlanKnobs], Plan]

_FILLER = (
    "please",
    "the",
    "our",
    "team",
    "today",
    "details",
    "below",
    "project",
    "thanks",
    "note",
    "for",
    "with",
    "new",
    "about",
    "and",
)


def _pick(rng: random.Random, seq):
    return seq[int(rng.random() * len(seq))]


def _filler(rng: random.Random, num_words: int) -> str:
    return " ".join(_pick(rng, _FILLER) for _ in range(num_words))


def _chunks(calls: list[Call], size: int) -> list[Round]:
    """Fan-out calls as parallel rounds of at most ``size`` (size 1: sequential)."""
    return [tuple(calls[i : i + size]) for i in range(0, len(calls), size)]


# --- support: a router picks specialists by the task's topic words -------------------------

SUPPORT_TOPICS: dict[str, tuple[str, ...]] = {
    "billing": ("refund", "invoice", "charge"),
    "tech_support": ("crash", "error", "install"),
    "shipping": ("delivery", "package", "tracking"),
    "accounts": ("password", "login", "profile"),
}
_SPECIALISTS = tuple(SUPPORT_TOPICS)


def plan_support(rng: random.Random, knobs: PlanKnobs) -> Plan:
    u = rng.random()
    num_topics = 1 if u < 0.6 else 2 if u < 0.9 else 3
    topics = rng.sample(_SPECIALISTS, num_topics)
    urgent = rng.random() < 0.25
    words = [_pick(rng, SUPPORT_TOPICS[t]) for t in topics]
    task = f"ticket: {'urgent ' if urgent else ''}{' and '.join(words)} {_filler(rng, 4)}"
    rounds: list[Round] = []
    for loop in range(knobs.max_loops):
        prio = "high" if urgent else "normal"
        rounds.append((Call("triage", f"ticket triaged, priority {prio}", "triage"),))
        calls = []
        for topic in topics:
            agent = _pick(rng, _SPECIALISTS) if rng.random() < knobs.noise else topic
            calls.append(Call(agent, f"proposed fix: {_filler(rng, 3)}", "resolve"))
        rounds.extend(_chunks(calls, knobs.max_fanout))
        if urgent:
            rounds.append((Call("supervisor", "escalation reviewed", "resolve"),))
        follow_up = loop + 1 < knobs.max_loops and rng.random() < 0.4
        says_follow_up = follow_up != (rng.random() < knobs.noise)
        reply = (
            "follow-up needed, customer has another issue"
            if says_follow_up
            else "resolved, closing ticket"
        )
        rounds.append((Call("responder", reply, "reply"),))
        if not follow_up:
            break
        # The customer's follow-up is about a new topic the model cannot know in advance.
        topics = [_pick(rng, _SPECIALISTS)]
    return Plan(task, rounds)


# --- codegen: a coder/reviewer loop that ends when the reviewer says "approved" ------------

_DIFFICULTY = {"simple": 0.7, "moderate": 0.45, "complex": 0.25}  # P(approved) in round 1


def plan_codegen(rng: random.Random, knobs: PlanKnobs) -> Plan:
    level = _pick(rng, tuple(_DIFFICULTY))
    document = rng.random() < 0.3
    task = (
        f"implement a {level} {_pick(rng, ('parser', 'cache', 'scheduler', 'api'))}"
        f"{' and document it' if document else ''} {_filler(rng, 3)}"
    )
    rounds: list[Round] = [(Call("planner", f"plan: {_filler(rng, 4)}", "design"),)]
    for attempt in range(knobs.max_loops):
        rounds.append((Call("coder", f"patch: {_filler(rng, 3)}", "code"),))
        approved = (
            attempt + 1 == knobs.max_loops or rng.random() < _DIFFICULTY[level] + 0.2 * attempt
        )
        says = approved != (rng.random() < knobs.noise)
        rounds.append(
            (
                Call(
                    "reviewer",
                    "review: approved, ship it"
                    if says
                    else f"review: changes requested, {_filler(rng, 2)}",
                    "review",
                ),
            )
        )
        if not approved:
            continue
        passed = attempt + 1 == knobs.max_loops or rng.random() < 0.8
        says = passed != (rng.random() < knobs.noise)
        rounds.append((Call("tester", "tests passed" if says else "tests failed", "test"),))
        if passed:
            break
    if document:
        rounds.append((Call("docs_writer", "docs written", "document"),))
    return Plan(task, rounds)


# --- tooluse: a ReAct loop whose output text names the next tool ---------------------------

TOOL_CUES: dict[str, tuple[str, ...]] = {
    "search": ("who", "when", "where"),
    "calculator": ("calculate", "percentage", "sum"),
    "python": ("csv", "plot", "dataset"),
}
_TOOLS = tuple(TOOL_CUES)


def plan_tooluse(rng: random.Random, knobs: PlanKnobs) -> Plan:
    main_tool = _pick(rng, _TOOLS)
    multi_hop = rng.random() < 0.4
    cite = rng.random() < 0.3
    task = (
        f"{'compare: ' if multi_hop else ''}{_pick(rng, TOOL_CUES[main_tool])} "
        f"{_filler(rng, 4)}{' and cite sources' if cite else ''}"
    )
    num_calls = min(
        knobs.max_loops, 2 + int(rng.random() * 4) if multi_hop else 1 + int(rng.random() * 3)
    )
    rounds: list[Round] = []
    for _ in range(num_calls):
        tool = main_tool if rng.random() < 0.8 else _pick(rng, _TOOLS)
        shown = _pick(rng, _TOOLS) if rng.random() < knobs.noise else tool
        rounds.append(
            (Call("assistant", f"Thought: {_filler(rng, 2)}. Action: {shown}[...]", "act"),)
        )
        rounds.append((Call(tool, f"Observation: {_filler(rng, 3)}", "observe"),))
    rounds.append((Call("assistant", f"Final Answer: {_filler(rng, 3)}", "answer"),))
    if cite:
        rounds.append((Call("verifier", "citations checked", "verify"),))
    return Plan(task, rounds)


# --- research: fan-out researchers, then a critic loop -------------------------------------

_SUBTOPICS = ("cost", "latency", "safety", "accuracy", "energy", "adoption")


def plan_research(rng: random.Random, knobs: PlanKnobs) -> Plan:
    subtopics = rng.sample(_SUBTOPICS, 2 + int(rng.random() * 3))
    task = f"report comparing {', '.join(subtopics)} {_filler(rng, 3)}"
    rounds: list[Round] = [(Call("lead", f"plan: {len(subtopics)} subtopics", "plan"),)]
    calls = [Call("researcher", f"notes on {s}", "research") for s in subtopics]
    rounds.extend(_chunks(calls, knobs.max_fanout))
    for attempt in range(knobs.max_loops):
        rounds.append((Call("synthesizer", f"draft: {_filler(rng, 3)}", "synthesize"),))
        gap = attempt + 1 < knobs.max_loops and rng.random() < (0.4 if attempt == 0 else 0.2)
        says = gap != (rng.random() < knobs.noise)
        rounds.append(
            (
                Call(
                    "critic",
                    f"gap found in {_pick(rng, subtopics)}" if says else "coverage complete",
                    "critique",
                ),
            )
        )
        if not gap:
            break
        rounds.append((Call("researcher", f"notes: {_filler(rng, 2)}", "research"),))
    rounds.append((Call("writer", "final report written", "write"),))
    return Plan(task, rounds)


DYNAMIC_APPS: dict[str, AppPlanner] = {
    "support": plan_support,
    "codegen": plan_codegen,
    "tooluse": plan_tooluse,
    "research": plan_research,
}


# --- static: fixed pipelines (KVFlow's evaluation style) -----------------------------------

_ROLES = (
    "planner",
    "retriever",
    "analyst",
    "coder",
    "reviewer",
    "tester",
    "writer",
    "editor",
    "summarizer",
    "critic",
    "translator",
    "formatter",
)


@dataclass(frozen=True, slots=True)
class StaticPipeline:
    """A fixed sequence of rounds; ``fanout_at`` (if any) is the round run as a parallel group."""

    name: str
    agents: tuple[str, ...]
    fanout_at: int | None = None
    fanout_width: int = 1

    def rounds(self) -> list[Round]:
        rounds: list[Round] = []
        for i, agent in enumerate(self.agents):
            if i == self.fanout_at:
                rounds.append(
                    tuple(
                        Call(f"{agent}_{k}", f"{agent} part {k} done")
                        for k in range(self.fanout_width)
                    )
                )
            else:
                rounds.append((Call(agent, f"{agent} done"),))
        return rounds


def make_static_pipeline(
    rng: random.Random, name: str, length: tuple[int, int], max_fanout: int
) -> StaticPipeline:
    """Draws one app's fixed pipeline (done once per app, not per workflow)."""
    num_agents = length[0] + int(rng.random() * (length[1] - length[0] + 1))
    agents = rng.sample(_ROLES, min(num_agents, len(_ROLES)))
    while len(agents) < num_agents:  # longer than the role pool: agents come back later
        agents.append(_pick(rng, [a for a in agents if a != agents[-1]]))
    if max_fanout > 1 and num_agents > 2:
        width = 2 + int(rng.random() * (min(max_fanout, 4) - 1))
        return StaticPipeline(name, tuple(agents), 1 + int(rng.random() * (num_agents - 2)), width)
    return StaticPipeline(name, tuple(agents))
