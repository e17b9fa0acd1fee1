"""Issue 30: chat and reasoning controls, per suite and per benchmark, mapped onto nemo-evaluator's adapter; part of
the result key and of `eval compare`'s like-for-like check."""

import shlex
from pathlib import Path

import pytest
import yaml

from nemotron.benchmarks import chat, runner
from nemotron.config.schema import load_config
from nemotron.errors import ConfigError
from nemotron.records import compare
from nemotron.serving.endpoints import Endpoint
from tests.test_compare import evaluation

MODEL = "/models/m"
PROMPT = 'You are a careful grader. Answer "briefly"; do not explain $HOME.'


def plans(overrides=(), tasks=("gsm8k", "gsm8k_cot_instruct")):
    cfg = load_config("local", list(overrides))
    found = runner.plan(cfg, runner.select_tasks(cfg, list(tasks)), MODEL, f"{MODEL}@1", Path("/out"), None)
    return {p.name: p for p in found}


def adapter(plan):
    return plan.run_config(Endpoint("http://127.0.0.1:9/v1", "m"))["target"]["api_endpoint"]["adapter_config"]


def test_without_controls_the_harness_sends_straight_to_the_gate_and_the_key_is_as_before():
    p = plans()
    assert p["gsm8k"].chat == {} and adapter(p["gsm8k"]) == chat.DIRECT
    assert p["gsm8k"].key == runner.result_key(f"{MODEL}@1", p["gsm8k"].task_type, p["gsm8k"].params)


def test_a_system_prompt_goes_through_the_adapter_for_chat_tasks_and_lm_evals_switch_for_completions():
    p = plans([f"evaluation.chat.system_prompt='{PROMPT}'"])
    plain, before = plans(), p["gsm8k_cot_instruct"]
    cfg = adapter(before)
    assert cfg["mode"] == "server"
    assert [i["name"] for i in cfg["interceptors"]] == ["system_message", "endpoint"]
    assert cfg["interceptors"][0]["config"] == {"system_message": PROMPT, "strategy": "prepend"}
    # a completions task: lm-eval renders the prompt, so the instruction is its switch, quoted for the shell
    completions = p["gsm8k"]
    assert adapter(completions) == chat.DIRECT
    assert shlex.split(completions.params["extra"]["args"]) == ["--system_instruction", PROMPT]
    for name in ("gsm8k", "gsm8k_cot_instruct"):  # a system prompt changes scores: another key, another folder
        assert p[name].key != plain[name].key and p[name].output_dir != plain[name].output_dir


def test_a_task_overrides_the_suites_controls_field_by_field():
    p = plans(["evaluation.chat.system_prompt=suite",
               "evaluation.chat.add_params={chat_template_kwargs: {enable_thinking: false}, seed: 1}",
               "evaluation.tasks=[{name: gsm8k_cot_instruct, chat: {add_params: {seed: 2}, drop_params: [logprobs],"
               " strip_reasoning: {unfinished: empty}}}]"], tasks=("gsm8k_cot_instruct",))
    (only,) = p.values()
    assert only.chat == {"system_prompt": "suite", "drop_params": ["logprobs"],
                         "add_params": {"chat_template_kwargs": {"enable_thinking": False}, "seed": 2},
                         "strip_reasoning": {"start": "<think>", "end": "</think>", "unfinished": "empty"}}
    names = [(i["name"], i.get("config")) for i in adapter(only)["interceptors"]]
    assert [n for n, _ in names] == ["system_message", "payload_modifier", "endpoint", "reasoning"]
    assert names[1][1] == {"params_to_add": {"chat_template_kwargs": {"enable_thinking": False}, "seed": 2},
                           "params_to_remove": ["logprobs"]}
    reasoning = names[3][1]
    assert reasoning["end_reasoning_token"] == "</think>" and reasoning["include_if_not_finished"] is False
    assert reasoning["cache_dir"].startswith(only.output_dir)  # not the /tmp folder every run would share


def test_the_chat_template_for_completions_tasks_needs_the_tokenizer_and_is_moot_for_chat_tasks():
    p = plans(["evaluation.chat.apply_chat_template=true"])
    assert shlex.split(p["gsm8k"].params["extra"]["args"]) == ["--apply_chat_template"]
    assert p["gsm8k"].params["extra"]["tokenizer"] == MODEL
    assert p["gsm8k_cot_instruct"].chat == {} and p["gsm8k_cot_instruct"].key == plans()["gsm8k_cot_instruct"].key


def test_a_prompt_control_on_another_harness_completions_task_is_refused_in_one_line():
    cfg = load_config("local", ["evaluation.chat.system_prompt=x", "evaluation.hf_offline=false"])
    with pytest.raises(ConfigError) as e:
        runner.plan(cfg, runner.select_tasks(cfg, ["bigcode-evaluation-harness.humaneval"]), MODEL, "m",
                    Path("/out"), None)
    assert "humaneval" in str(e.value) and "chat.system_prompt" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [
    [f"evaluation.chat.system_prompt='{PROMPT}'"],
    ["evaluation.chat.apply_chat_template=true", "evaluation.chat.system_prompt=Be brief.",
     "evaluation.nemo_evaluator_config.config.params.extra={args: '--seed 3'}"],
    ["evaluation.chat.strip_reasoning={start: null, end: '</reasoning>'}",
     "evaluation.chat.add_params={chat_template_kwargs: {enable_thinking: false}}"],
])
def test_the_controls_are_read_back_from_the_run_config_as_the_config_names_them(overrides):
    plain = plans([o for o in overrides if not o.startswith("evaluation.chat.")])
    for p in plans(overrides).values():
        doc = yaml.safe_load(yaml.safe_dump(p.run_config(Endpoint("http://127.0.0.1:9/v1", "m"))))
        controls, args = chat.recorded(doc)
        assert controls == p.chat, p.name
        # what the config and the registry (gsm8k_cot_instruct's --add_instruction) pass stays as it was
        assert shlex.split(args) == shlex.split(plain[p.name].params.get("extra", {}).get("args") or "")


def test_a_system_prompt_makes_results_not_comparable_naming_it(tmp_path):
    a = evaluation(tmp_path, "a", {"strict-match": [0.0] * 3}, limit=3)
    b = evaluation(tmp_path, "b", {"strict-match": [1.0] * 3}, limit=3)
    config = b.parent / "benchmarks" / "gsm8k-b" / "nemotron_run_config.yml"
    doc = yaml.safe_load(config.read_text())
    doc["target"] = {"api_endpoint": {"adapter_config": chat.adapter_config({"system_prompt": PROMPT}, "", "chat")}}
    config.write_text(yaml.safe_dump(doc))
    (x,) = compare.compare(compare.load(a), compare.load(b))
    assert not x.comparable and x.p is None
    (why,) = x.differs
    assert why.startswith("chat.system_prompt unset → 'You are a careful") and len(why) < 100, why
