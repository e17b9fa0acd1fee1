from pathlib import Path

import pytest

from nemotron import benchmarks
from nemotron.config import load_config
from nemotron.errors import ConfigError
from nemotron.serving import Endpoint
from tests.helpers import SHARED_HF_HOME

MODEL = "/models/m"


def plan(overrides=(), tasks=None, hf_home=None, config="local"):
    cfg = load_config(config, list(overrides))
    return benchmarks.plan(cfg, benchmarks.select_tasks(cfg, tasks), MODEL, Path("/out"), hf_home)


def by_name(plans):
    return {p.name: p for p in plans}


def test_loglikelihood_tasks_get_the_model_tokenizer():
    plans = by_name(plan())
    assert plans["hellaswag"].params["extra"]["tokenizer"] == MODEL
    assert plans["hellaswag"].params["extra"]["tokenizer_backend"] == "huggingface"
    assert plans["gsm8k"].params["extra"].get("tokenizer") is None


def test_params_merge_registry_then_global_then_task():
    p = by_name(plan(["evaluation.tasks.1.nemo_evaluator_config.config.params.limit_samples=1"]))
    assert p["hellaswag"].params["limit_samples"] == 1  # task level wins
    assert p["gsm8k"].params["limit_samples"] == 3  # evaluation-wide (local.yaml)
    assert p["adlr_mmlu"].params["limit_samples"] == 1  # task level in local.yaml
    assert p["hellaswag"].params["extra"]["num_fewshot"] == 10  # registry default kept
    assert p["adlr_mmlu"].params["task"] == "mmlu_str"


def test_timeout_and_retries_from_config():
    p = by_name(plan(["evaluation.timeout=99", "evaluation.tasks.6.retries=3"]))
    assert p["gsm8k"].timeout == 99 and p["gsm8k"].retries == 3 and p["hellaswag"].retries == 1


def test_task_filter_runs_exactly_those():
    assert [p.name for p in plan(tasks=["hellaswag", "arc_challenge"])] == ["hellaswag", "arc_challenge"]


def test_task_filter_accepts_registry_tasks_outside_the_config():
    assert [p.name for p in plan(tasks=["winogrande"])] == ["winogrande"]


def test_each_benchmark_has_its_own_output_dir():
    dirs = [p.output_dir for p in plan()]
    assert len(set(dirs)) == len(dirs) == 7


def test_run_config_targets_the_endpoint():
    p = plan(tasks=["gsm8k"])[0]
    doc = p.run_config(Endpoint("http://127.0.0.1:9", "m"))
    assert doc["target"]["api_endpoint"] == {"url": "http://127.0.0.1:9/v1/completions", "model_id": "m",
                                             "type": "completions"}
    assert doc["config"]["type"] == "lm-evaluation-harness.gsm8k"


@pytest.mark.skipif(not SHARED_HF_HOME.is_dir(), reason="needs ../shared/hf-home")
def test_offline_refuses_a_task_whose_dataset_is_not_cached():
    with pytest.raises(ConfigError, match=r"'openbookqa' needs dataset openbookqa \(main\)"):
        plan(["evaluation.hf_home=" + str(SHARED_HF_HOME)], tasks=["openbookqa"], hf_home=SHARED_HF_HOME)


@pytest.mark.skipif(not SHARED_HF_HOME.is_dir(), reason="needs ../shared/hf-home")
def test_online_does_not_check_the_cache():
    plans = plan(["evaluation.hf_home=" + str(SHARED_HF_HOME), "evaluation.hf_offline=false"],
                 tasks=["openbookqa"], hf_home=SHARED_HF_HOME)
    assert plans[0].name == "openbookqa"


def test_harness_env_offline_switches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", "/elsewhere")
    env = benchmarks.harness_env(tmp_path, offline=True)
    assert env["HF_HOME"] == str(tmp_path) and env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_DATASETS_CACHE" not in env and env["NEMO_EVALUATOR_TELEMETRY_LEVEL"] == "0"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_HUB_OFFLINE" not in benchmarks.harness_env(None, offline=False)
