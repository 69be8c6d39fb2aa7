"""``pbkv bench vllm`` bookkeeping (the benchmark itself runs engines; see bench/vllm.py)."""

from pbkv.bench.vllm_calibration import _features, _omp_threads
from pbkv.bench.vllm_report import summarise


def row(run, repeat, latency, cpu, prompt=1000, cached=250):
    return {
        "workload": "dynamic",
        "run": run,
        "repeat": repeat,
        "median_latency_s": latency,
        "mean_latency_s": latency,
        "median_cpu_s": cpu,
        "hit_rate": cached / prompt,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "host_hit_blocks": 0,
    }


def test_speedups_are_taken_per_repeat_then_medianed():
    rows = [
        row("lru", 0, 4.0, 2.0),
        row("pbkv", 0, 2.0, 1.0, cached=500),
        row("lru", 1, 9.0, 3.0),
        row("pbkv", 1, 3.0, 2.0, cached=500),
    ]
    s = summarise(rows, baseline="lru")["dynamic"]
    assert s["pbkv"]["speedups_vs_lru_per_repeat"] == [2.0, 3.0]
    assert s["pbkv"]["speedup_vs_lru"] == 2.5
    assert s["pbkv"]["cpu_speedup_vs_lru"] == 1.75
    assert s["pbkv"]["recomputed_tokens"] == 500
    assert s["lru"]["speedup_vs_lru"] == 1.0


def test_host_tier_drops_and_misses_are_medianed_per_reason():
    rows = [
        row("pbkv+host", r, 1.0, 1.0)
        | {"connector": {"host_dropped_plan": plan, "host_miss_dropped_plan": miss}}
        for r, (plan, miss) in enumerate([(10, 1), (30, 5), (20, 4)])
    ]
    s = summarise(rows, baseline="pbkv+host")["dynamic"]["pbkv+host"]
    assert s["host_dropped_by_reason"] == {"spare": 0, "plan": 20, "lru": 0}
    assert s["host_miss_dropped_by_reason"] == {"spare": 0, "plan": 4, "lru": 0}


def test_iteration_features_match_the_cost_model_terms():
    # one prefill chunk of 4 new tokens after 10 cached, two decodes at contexts 7 and 9
    assert _features([(4, 10)], [7, 9]) == [1.0, 4.0, 4 * (10 + 2.5), 1.0, 2.0, 16.0]
    assert _features([], []) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_omp_thread_count_from_the_bind_spec(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3,6")
    assert _omp_threads() == 5


def test_modelled_ratios_are_per_repeat():
    from pbkv.bench.vllm_calibration import modelled as _modelled

    rows = [
        {
            "workload": "w",
            "run": "lru",
            "repeat": 0,
            "modelled_engine_s": 6.0,
            "engine_cpu_s_per_thread": 4.0,
        },
        {
            "workload": "w",
            "run": "pbkv",
            "repeat": 0,
            "modelled_engine_s": 4.0,
            "engine_cpu_s_per_thread": 5.0,
        },
    ]
    m = _modelled(rows)["w"]
    assert m["pbkv"]["modelled_speedup_vs_lru"] == 1.5
    assert m["pbkv"]["engine_cpu_speedup_vs_lru"] == 0.8
    assert m["lru"]["modelled_speedup_vs_lru"] == 1.0


def test_simulator_replays_every_run_with_its_own_policy_and_host_tier():
    from pbkv.bench.vllm_calibration import _simulate
    from pbkv.bench.vllm_session import SessionRun, SessionSpec, WorkloadSpec
    from pbkv.engine_adapter.sim.presets import PRESETS

    knobs = {"system_tokens": [1000, 4000], "new_tokens": [32, 128], "output_tokens": [8, 8]}
    workload = WorkloadSpec(
        "dynamic", "synth:dynamic", num_workflows=12, history_workflows=40, knobs=knobs
    )
    runs = (SessionRun("lru", "lru"), SessionRun("pbkv+host", "pbkv", host_tier_blocks=1024))
    spec = SessionSpec(
        model_dir="unused", runs=runs, predictor="markov1", concurrency=4, workloads=(workload,)
    )
    measured = [
        {
            "workload": "dynamic",
            "run": label,
            "repeat": 0,
            "gpu_blocks": gpu,
            "max_num_batched_tokens": 8192,
            "mean_latency_s": 2.0,
            "mean_cpu_s": 4.0,
            "hit_rate": 0.5,
            "prompt_tokens": 1000,
            "cached_tokens": 500,
            "wall_s": 9.0,
        }
        for label, gpu in (("stock", None), ("lru", 60), ("pbkv+host", 60))
    ]
    out = _simulate(measured, (workload,), runs, spec, PRESETS.create("vllm-cpu").cost)["dynamic"]
    assert set(out) == {"stock", "lru", "pbkv+host"}
    # stock and lru are the same machine in the simulator; the host tier must pay off
    assert out["stock"]["simulated_mean_latency_s"] == out["lru"]["simulated_mean_latency_s"]
    assert out["pbkv+host"]["simulated_hit_rate"] > out["lru"]["simulated_hit_rate"] + 0.1
    for c in out.values():
        assert c["error"] == c["simulated_mean_latency_s"] / 2.0 - 1.0


def test_output_identity_counts_mismatches_and_the_prefix_splits_behind_them():
    from pbkv.bench.vllm_checks import output_identity, report_lines

    def replay(run, outputs, cached):
        return {
            "workload": "dynamic",
            "run": run,
            "repeat": 0,
            "outputs": outputs,
            "cached": cached,
        }

    stock = replay("stock", {"a": [1, 2], "b": [3], "c": [4]}, {"a": 0, "b": 128, "c": 256})
    same = replay("lru", {"a": [1, 2], "b": [3], "c": [4]}, {"a": 0, "b": 128, "c": 256})
    host = replay("pbkv+host", {"a": [1, 2], "b": [3, 9], "c": [5]}, {"a": 0, "b": 256, "c": 256})
    identity = output_identity([stock, same, host])
    assert identity["identical"] is False
    assert identity["per_run"]["dynamic/lru"]["mismatched"] == 0
    assert identity["per_run"]["dynamic/pbkv+host"] == {
        "requests": 3,
        "mismatched": 2,
        "cached_differs": 1,
        "mismatched_cached_differs": 1,
        "with_cached_prefix": 2,
        "mismatched_with_cached_prefix": 2,
        "examples": [
            {
                "repeat": 0,
                "request": "b",
                "cached": 256,
                "stock_cached": 128,
                "first_difference": 1,
            },
            {
                "repeat": 0,
                "request": "c",
                "cached": 256,
                "stock_cached": 256,
                "first_difference": 0,
            },
        ],
    }
    lines = report_lines({"greedy_identity": identity})
    assert lines[-1] == "FAIL: greedy outputs differ from stock vLLM's: {'dynamic/pbkv+host': 2}"
    assert output_identity([stock, same])["identical"] is True


def test_head_to_head_ratios_pair_runs_of_the_same_round():
    from pbkv.bench.vllm_checks import head_to_head

    rows = [
        row("lru-offload+host", 0, 3.0, 1.0, cached=400),
        row("pbkv+host", 0, 2.0, 1.0, cached=700),
        row("lru-offload+host", 1, 4.0, 1.0, cached=500),
        row("pbkv+host", 1, 2.0, 1.0, cached=750),
    ]
    modelled = {
        "dynamic": {
            "lru-offload+host": {"modelled_engine_s": 6.0},
            "pbkv+host": {"modelled_engine_s": 4.0},
        }
    }
    pair = head_to_head(rows, modelled)["dynamic"]["pbkv+host vs lru-offload+host"]
    # recomputed 600/300 = 2.0 and 500/250 = 2.0; latency 1.5 and 2.0
    assert pair == {
        "recomputed_tokens_ratio": 2.0,
        "modelled_engine_ratio": 1.5,
        "median_latency_ratio": 1.75,
        "rounds": 2,
    }


def test_run_names_map_to_host_tiers_and_pbkv_gets_its_host_tier_configuration():
    from pbkv.bench.vllm import session_run
    from pbkv.bench.vllm_session import SessionRun, SessionSpec, manager_config

    assert session_run("pbkv", 300, 96) == SessionRun("pbkv", "pbkv")
    assert session_run("pbkv+host", 300, 96) == SessionRun("pbkv+host", "pbkv", 300, 0)
    assert session_run("lru-offload+xhost", 300, 96) == SessionRun(
        "lru-offload+xhost", "lru-offload", 300, 96
    )
    spec = SessionSpec(model_dir="unused")
    c = manager_config(spec, "pbkv", 300)
    assert (c.planner.host_plan_blocks, c.planner.transfer_budget_blocks) == (300, 0)
    assert c.pbkv.min_offload_p == 0.0
    default = manager_config(spec, "pbkv", 0)
    assert default.planner.host_plan_blocks == 0 and default.pbkv.min_offload_p == 0.7
    lru = manager_config(spec, "lru-offload", 300)
    assert (lru.policy, lru.planner.host_plan_blocks) == ("lru-offload", 0)
