"""Issue 30: evaluation.judge, handed to every task whose harness takes a judge (its `extra.judge`)."""

import json
from pathlib import Path

import pytest

from nemotron.benchmarks import runner
from nemotron.config import secrets
from nemotron.config.schema import load_config
from nemotron.errors import ConfigError
from nemotron.serving.endpoints import Endpoint

MODEL = "/models/m"
ONLINE = "evaluation.hf_offline=false"  # MT-Bench's harness is planned where the hub is reachable


def plan(*overrides, tasks=("mtbench", "gsm8k")):
    cfg = load_config("local", [ONLINE, *overrides])
    found = runner.plan(cfg, runner.select_tasks(cfg, list(tasks)), MODEL, f"{MODEL}@1", Path("/out"), None)
    return {p.name: p for p in found}


def test_a_judged_task_without_a_judge_is_refused_in_one_line_naming_how_to_set_one():
    with pytest.raises(ConfigError) as e:
        plan()
    said = str(e.value)
    assert said.startswith("task 'mtbench' is scored by a judge model and none is set") and "\n" not in said
    assert "evaluation.judge.served=true" in said and "evaluation.judge.url" in said


def test_the_served_model_judges_itself_on_a_gate_route_of_its_own():
    p = plan("evaluation.judge.served=true")
    assert p["mtbench"].judge == {"served": True} and p["gsm8k"].judge == {}
    route = Endpoint("http://127.0.0.1:5000/mtbench", "smollm2", api_key_env="NEMOTRON_GATE_TOKEN")
    judge = p["mtbench"].run_config(route)["config"]["params"]["extra"]["judge"]
    # MT-Bench hands its URLs to the OpenAI client, which appends /chat/completions: it is given the base
    assert judge["url"] == "http://127.0.0.1:5000/mtbench-judge/v1"
    assert p["mtbench"].run_config(route)["target"]["api_endpoint"]["url"] == "http://127.0.0.1:5000/mtbench/v1"
    assert judge["model_id"] == "smollm2" and judge["api_key_name"] == "NEMOTRON_GATE_TOKEN"
    assert judge["max_tokens"] == 2048  # the registry's other judge settings stay
    # the gate's URL is new each run: not in the key, which is the same run to run
    assert p["mtbench"].key == plan("evaluation.judge.served=true")["mtbench"].key
    # its share of the budget is a capacity setting: the same results
    assert p["mtbench"].key == plan("evaluation.judge={served: true, in_flight: 3}")["mtbench"].key
    # what its requests are sent with changes its judgments: another key
    held = plan("evaluation.judge={served: true, add_params: {chat_template_kwargs: {enable_thinking: false}}}")
    assert held["mtbench"].judge["add_params"] == {"chat_template_kwargs": {"enable_thinking": False}}
    assert held["mtbench"].key != p["mtbench"].key and held["gsm8k"].key == p["gsm8k"].key
    assert p["gsm8k"].key == plan(tasks=("gsm8k",))["gsm8k"].key  # a task that takes no judge: as without one


def test_a_running_judge_is_named_in_the_params_and_the_key_and_its_key_is_a_secret(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "judge-secret-5e1f9a")
    running = ["evaluation.judge={url: 'https://judge.example/v1/chat/completions', model_id: big-judge, "
               "api_key_env: JUDGE_KEY}"]
    p = plan(*running)
    judge = p["mtbench"].params["extra"]["judge"]
    assert judge["url"] == "https://judge.example/v1/chat/completions" and judge["model_id"] == "big-judge"
    assert judge["api_key_name"] == "JUDGE_KEY"
    assert "judge-secret-5e1f9a" in secrets.values()  # masked wherever it would show
    other = plan("evaluation.judge={url: 'https://judge.example/v1/chat/completions', model_id: other-judge, "
                 "api_key_env: JUDGE_KEY}")
    assert other["mtbench"].key != p["mtbench"].key != plan("evaluation.judge.served=true")["mtbench"].key
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ConfigError, match=r"^evaluation.judge.api_key_env=JUDGE_KEY names a variable that is not set"):
        plan(*running)


@pytest.mark.parametrize("judge", ["{served: true, url: 'https://j/v1/chat/completions', model_id: j}", "{}",
                                   "{url: 'https://j/v1/chat/completions'}",
                                   "{url: 'https://j/v1/chat/completions', model_id: j, in_flight: 4}",
                                   "{url: 'https://j/v1/chat/completions', model_id: j, add_params: {a: 1}}"])
def test_a_judge_is_served_or_running_not_both_or_neither(judge):
    with pytest.raises(ConfigError, match="evaluation.judge"):
        load_config("local", [f"evaluation.judge={judge}"])


def test_two_runs_judged_by_their_own_served_model_compare_like_for_like(tmp_path):
    """The served judge's URL is the run's gate (a new port each run): not a difference; a running judge's is."""
    import yaml

    from nemotron.records import compare
    from tests.test_compare import evaluation

    def judged(name, url, key_name, add_params=None):
        run = evaluation(tmp_path, name, {"strict-match": [1.0, 0.0, 1.0]}, limit=3)
        config = tmp_path / "benchmarks" / f"gsm8k-{name}" / "nemotron_run_config.yml"
        doc = yaml.safe_load(config.read_text())
        doc["config"]["params"]["extra"]["judge"] = {"url": url, "model_id": "smollm2", "api_key_name": key_name}
        config.write_text(yaml.safe_dump(doc))
        if add_params:  # the served judge's request fields, as the run's config (manifest) names them
            manifest = json.loads((run / "manifest.json").read_text())
            manifest.setdefault("config", {}).setdefault("evaluation", {})["judge"] = {"served": True,
                                                                                     "add_params": add_params}
            (run / "manifest.json").write_text(json.dumps(manifest))
        return compare.load(run)

    a = judged("a", "http://127.0.0.1:5001/gsm8k-judge/v1/chat/completions", "NEMOTRON_GATE_TOKEN")
    b = judged("b", "http://127.0.0.1:6002/gsm8k-judge/v1/chat/completions", "NEMOTRON_GATE_TOKEN")
    (same,) = compare.compare(a, b)
    assert same.comparable, same.differs
    c = judged("c", "https://judge.example/v1/chat/completions", "JUDGE_KEY")
    (apart,) = compare.compare(a, c)
    assert not apart.comparable and apart.differs == (
        "extra.judge.url 'the served model' → https://judge.example/v1/chat/completions",), \
        apart.differs
    held = judged("d", "http://127.0.0.1:7003/gsm8k-judge/v1/chat/completions", "NEMOTRON_GATE_TOKEN",
                  {"structured_outputs": {"regex": "[[][[][1-9][]][]]"}})
    (apart,) = compare.compare(a, held)
    assert not apart.comparable and apart.differs == (
        "judge.add_params.structured_outputs.regex unset → [[][[][1-9][]][]]",), apart.differs


def test_the_dry_run_names_each_benchmarks_judge_and_chat_controls():
    from tests.helpers import nemotron

    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "-t", "mtbench", "-t", "gsm8k_cot_instruct",
                 "evaluation.judge.served=true", "evaluation.chat.system_prompt=Be brief.")
    assert r.returncode == 0, r.stderr
    assert "judge: this run's served model, on the gate's route <name>-judge" in r.stdout, r.stdout
    assert "system_prompt: Be brief." in r.stdout and "name: system_message" in r.stdout, r.stdout
