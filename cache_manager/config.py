"""The manager's configuration: one frozen, self-validating config per component, composed.

Each component's config lives beside it and holds that component's one default; the manager
hands each component (and the chosen policy's factory) only its own part::

    ManagerConfig   policy, horizon, top_kept, ended_memory
      .pbkv         PbkvPolicyConfig   (policies.py; .scorer: ScorerConfig, scorer.py)
      .kvflow       KvflowPolicyConfig (kvflow.py)
      .oracle       OracleConfig       (oracle.py; the clairvoyant policy's, section name kept)
      .cachesage    CachesagePolicyConfig (cachesage.py)
      .continuum    ContinuumPolicyConfig (continuum.py)
      .accuracy     AccuracyConfig     (accuracy.py: pbkv's fall-back to LRU)
      .planner      PlannerConfig      (planner.py)
      .directory    DirectoryConfig    (block_directory.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pbkv.cache_manager.accuracy import AccuracyConfig
from pbkv.cache_manager.block_directory import MAX_USERS_PER_BLOCK
from pbkv.cache_manager.cachesage import CachesagePolicyConfig
from pbkv.cache_manager.checks import check_ints, check_type
from pbkv.cache_manager.continuum import ContinuumPolicyConfig
from pbkv.cache_manager.kvflow import KvflowPolicyConfig
from pbkv.cache_manager.oracle import OracleConfig
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.cache_manager.policies import POLICIES, PbkvPolicyConfig
from pbkv.predictor.recalibration import RecalibrationConfig

# The section of ManagerConfig each policy's factory receives (the others get None).
_POLICY_SECTIONS = {
    "pbkv": "pbkv",
    "pbkv-survival": "pbkv",
    "pbkv-hostgate": "pbkv",
    "pbkv-unclaimed": "pbkv",
    "pbkv-appaware": "pbkv",
    "pbkv-appshared": "pbkv",
    "kvflow": "kvflow",
    "clairvoyant": "oracle",
    "oracle": "oracle",
    "cachesage": "cachesage",
    "continuum": "continuum",
}


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """What the manager gives each engine's directory."""

    max_users_per_block: int = MAX_USERS_PER_BLOCK  # consumers remembered per block
    bytes_per_token: int | None = None  # KV bytes per token; unset: the pbkv scorer's

    def __post_init__(self) -> None:
        check_ints(self, {"max_users_per_block": 1})
        if self.bytes_per_token is not None:
            check_ints(self, {"bytes_per_token": 1})


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    policy: str = "pbkv"  # a name in POLICIES (pbkv, lru, lru-offload, kvflow, ...)
    horizon: int = 4  # steps ahead the predictor is asked about
    top_kept: int = 10  # BlockScores the stats carry for the dashboard (``top_kept``)
    ended_memory: int = 100_000  # finished workflow ids remembered (EndedWorkflow, dead blocks)
    pbkv: PbkvPolicyConfig = field(default_factory=PbkvPolicyConfig)
    kvflow: KvflowPolicyConfig = field(default_factory=KvflowPolicyConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    cachesage: CachesagePolicyConfig = field(default_factory=CachesagePolicyConfig)
    continuum: ContinuumPolicyConfig = field(default_factory=ContinuumPolicyConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    recalibration: RecalibrationConfig = field(default_factory=RecalibrationConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            POLICIES.get(self.policy)  # raises, listing the known names
        check_ints(self, {"horizon": 1, "top_kept": 0, "ended_memory": 1})
        for name, cls in (
            ("pbkv", PbkvPolicyConfig),
            ("kvflow", KvflowPolicyConfig),
            ("oracle", OracleConfig),
            ("cachesage", CachesagePolicyConfig),
            ("continuum", ContinuumPolicyConfig),
            ("accuracy", AccuracyConfig),
            ("recalibration", RecalibrationConfig),
            ("planner", PlannerConfig),
            ("directory", DirectoryConfig),
        ):
            check_type(self, name, cls)

    @property
    def policy_config(self) -> object | None:
        """The section the chosen policy's factory receives (None: it has none)."""
        section = _POLICY_SECTIONS.get(self.policy)
        return None if section is None else getattr(self, section)

    @property
    def bytes_per_token(self) -> int:
        d = self.directory.bytes_per_token
        return d if d is not None else self.pbkv.scorer.bytes_per_token
