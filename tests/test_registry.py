import subprocess
import sys

import pytest

from nemotron.benchmarks import registry
from nemotron.errors import ConfigError
from tests.helpers import SHARED_HF_HOME

SPEC_TASKS = ["adlr_mmlu", "hellaswag", "arc_challenge", "adlr_arc_challenge_llama_25_shot",
              "adlr_winogrande_5_shot", "openbookqa", "truthfulqa", "gsm8k"]


@pytest.mark.parametrize("name", SPEC_TASKS)
def test_every_spec_task_is_in_the_launcher_registry(name):
    info = registry.lookup(name)
    assert info.harness == "lm-evaluation-harness" and info.endpoint_type == "completions"


def test_qualified_names_work():
    assert registry.lookup("lm-evaluation-harness.hellaswag").name == "hellaswag"


def test_ambiguous_bare_name_asks_for_the_harness():
    with pytest.raises(ConfigError, match="lm-evaluation-harness.mmlu"):
        registry.lookup("mmlu")


def test_unknown_task_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        registry.lookup("nope")
    assert "unknown task 'nope'" in str(e.value) and "hellaswag" in str(e.value) and "gsm8k" in str(e.value)


def test_loglikelihood_tasks_are_flagged():
    assert registry.lookup("hellaswag").needs_logprobs
    assert not registry.lookup("gsm8k").needs_logprobs


def test_mmlu_group_resolves_to_its_57_subjects():
    ds = registry.datasets_for(registry.lookup("adlr_mmlu").harness_task)
    assert len(ds) == 57 and {d["path"] for d in ds} == {"hails/mmlu_no_train"}


def test_truthfulqa_tag_resolves_to_both_configs():
    ds = registry.datasets_for("truthfulqa")
    assert {d["name"] for d in ds} == {"multiple_choice", "generation"}


@pytest.mark.skipif(not SHARED_HF_HOME.is_dir(), reason="needs ../shared/hf-home")
def test_offline_cache_holds_all_spec_tasks_but_openbookqa():
    missing = {t: registry.missing_offline(registry.lookup(t).harness_task, SHARED_HF_HOME) for t in SPEC_TASKS}
    assert missing.pop("openbookqa") == ["openbookqa (main)"]
    assert all(v == [] for v in missing.values()), missing


def test_capability_payloads_come_without_importing_nemo_evaluator():
    """Its import reconfigures the root logger: the flow's console would fill with HTTP request lines."""
    code = ("import sys; from nemotron.benchmarks import registry; p = registry.capability_payloads(); "
            "assert p['logprobs']['echo'] is True, p; assert 'nemo_evaluator' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
