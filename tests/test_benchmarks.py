import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from nemotron.benchmarks import harness, runner
from nemotron.config.schema import load_config
from nemotron.errors import BenchmarkError, ConfigError
from nemotron.records.results import BenchmarkResult, Score
from nemotron.serving import endpoints
from nemotron.serving.endpoints import Endpoint, free_port
from tests.helpers import FAKE, SHARED_HF_HOME

MODEL = "/models/m"


def plan(overrides=(), tasks=None, hf_home=None, config="local"):
    cfg = load_config(config, list(overrides))
    return runner.plan(cfg, runner.select_tasks(cfg, tasks), MODEL, f"{MODEL}@1", Path("/out"), hf_home)


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
    api = doc["target"]["api_endpoint"]
    assert (api["url"], api["model_id"], api["type"]) == ("http://127.0.0.1:9/v1/completions", "m", "completions")
    assert doc["config"]["type"] == "lm-evaluation-harness.gsm8k"
    # lm-eval sends straight to the endpoint (the gate), no adapter proxy; the flow probes capabilities, not each
    # harness
    assert api["adapter_config"]["mode"] == "client"
    assert doc["config"]["required_capabilities"] == []


def test_a_benchmark_sends_with_the_whole_budget_unless_the_config_caps_it():
    (p,) = plan(tasks=["gsm8k"])
    assert p.max_parallelism is None and p.sending(45).params["parallelism"] == 45
    (capped,) = plan(["evaluation.nemo_evaluator_config.config.params.parallelism=4"], tasks=["gsm8k"])
    assert capped.sending(45).params["parallelism"] == 4 and capped.sending(2).params["parallelism"] == 2
    assert capped.sending(45).key == p.key  # how requests are sent is not part of the key


def test_capabilities_are_probed_once_per_suite(tmp_path):
    """Against the fault-injecting fake: it refuses echo/logprobs requests with a 500."""
    cfg = load_config("local", [])
    plans = runner.plan(cfg, runner.select_tasks(cfg, None), MODEL, "m@1", tmp_path, None)
    assert {p.name for p in plans if "logprobs" in p.capabilities} >= {"hellaswag", "adlr_winogrande_5_shot"}
    for args, refused in ((["--fail-logprobs"], True), ([], False)):
        port = free_port()
        journal = tmp_path / f"journal-{port}"
        proc = subprocess.Popen([sys.executable, str(FAKE), "--port", str(port), "--journal", str(journal), *args],
                                stdout=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            while not endpoints.healthy(url + "/health"):
                time.sleep(0.1)
            warnings = runner.verify_capabilities(plans, Endpoint(url, "fake"))
        finally:
            proc.kill()
            proc.wait()
        assert journal.read_text().count("request") == 1  # one probe for every logprobs task
        assert (len(warnings) == 1 and "refused a logprobs request (HTTP 500" in warnings[0]
                and "hellaswag" in warnings[0]) if refused else warnings == []


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
    env = runner.harness_env(tmp_path, offline=True)
    assert env["HF_HOME"] == str(tmp_path) and env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_DATASETS_CACHE" not in env and env["NEMO_EVALUATOR_TELEMETRY_LEVEL"] == "0"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_HUB_OFFLINE" not in runner.harness_env(None, offline=False)


def keyed(overrides=(), identity=f"{MODEL}@1"):
    cfg = load_config("local", list(overrides))
    (p,) = runner.plan(cfg, runner.select_tasks(cfg, ["gsm8k"]), MODEL, identity, Path("/out"), None)
    return p


def test_benchmark_folder_is_keyed_by_model_task_and_harness_params():
    p = keyed()
    assert p.output_dir == f"/out/gsm8k-{p.key[:12]}" and keyed().key == p.key
    assert keyed(identity=f"{MODEL}@2").key != p.key  # checkpoint rewritten / another artifact digest
    assert keyed(["evaluation.nemo_evaluator_config.config.params.limit_samples=9"]).key != p.key
    # how requests are sent is not what is asked: same results, same folder
    assert keyed(["evaluation.nemo_evaluator_config.config.params.parallelism=16",
                  "evaluation.nemo_evaluator_config.config.params.request_timeout=5"]).key == p.key


def test_a_folder_counts_as_finished_only_with_a_result_under_the_same_key(tmp_path):
    p = replace(keyed(), output_dir=str(tmp_path))
    assert runner.finished(p) is None
    done = BenchmarkResult("gsm8k", "completed", str(tmp_path), 3.0, (Score("gsm8k", "em", 0.5, 0.1, 4),))
    (tmp_path / runner.RESULT_FILE).write_text(json.dumps({"key": p.key, "result": asdict(done)}))
    assert runner.finished(p) == replace(done, reused=True)
    assert runner.finished(replace(p, key="other")) is None
    (tmp_path / runner.RESULT_FILE).write_text("{truncated")
    assert runner.finished(p) is None


@pytest.mark.parametrize("log, kind", [
    ("aiohttp.client_exceptions.ClientResponseError: 500, message='INTERNAL SERVER ERROR'", "infrastructure"),
    ("aiohttp.client_exceptions.ServerDisconnectedError: Server disconnected", "infrastructure"),
    ("Cannot connect to host 127.0.0.1:8000 ssl:default [Connect call failed]", "infrastructure"),
    ("asyncio.exceptions.TimeoutError", "infrastructure"),
    # issue 28: a rate limit is the endpoint's state, not the benchmark's: tried again
    ("aiohttp.client_exceptions.ClientResponseError: 429, message='Too Many Requests'", "infrastructure"),
    ("OSError: Can't load tokenizer for '/models/m'.", "configuration"),
    ("KeyError: 'no_such_task'", "configuration"),
])
def test_failures_are_told_apart_by_what_the_harness_log_shows(log, kind):
    assert runner.failure_kind(f"[I] starting\n{log}\nRuntimeError: Evaluation failed!\n") == kind


def test_only_infrastructure_failures_are_retried():
    from prefect.task_engine import TaskRunTimeoutError  # what a task's timeout_seconds raises

    assert runner.retryable(BenchmarkError("x", "infrastructure")) and runner.retryable(TaskRunTimeoutError())
    assert not runner.retryable(BenchmarkError("x", "configuration"))
    assert not runner.retryable(BenchmarkError("x", "model")) and not runner.retryable(ValueError())
    assert pickle.loads(pickle.dumps(BenchmarkError("x", "model"))).kind == "model"  # survives Prefect's storage


def test_harness_env_is_built_from_what_it_needs_not_inherited(tmp_path, monkeypatch):
    """Issue 14: cloud, Prefect and W&B credentials never reach a harness; HF_TOKEN does when set and the hub is
    reachable (issue 27: offline, it is a credential the harness does not need)."""
    for name, value in {"WANDB_API_KEY": "w" * 20, "PREFECT_API_KEY": "p" * 20, "AWS_SECRET_ACCESS_KEY": "a" * 20,
                        "SOME_RANDOM_VAR": "x", "HF_TOKEN": "hf_" + "t" * 20}.items():
        monkeypatch.setenv(name, value)
    env = runner.harness_env(tmp_path, offline=True)
    assert not {"WANDB_API_KEY", "PREFECT_API_KEY", "AWS_SECRET_ACCESS_KEY", "SOME_RANDOM_VAR"} & set(env)
    assert "HF_TOKEN" not in env
    assert runner.harness_env(tmp_path, offline=False)["HF_TOKEN"] == "hf_" + "t" * 20
    # lm-eval with its task index cached (nemotron.benchmarks.harness), then the venv's programs
    assert env["PATH"].split(os.pathsep)[:2] == [str(harness.harness_bin()), str(Path(sys.executable).parent)]


def test_a_harness_has_a_home_of_its_own_and_the_users_hf_cache_by_path(tmp_path, monkeypatch):
    """Issue 27: with the user's HOME, the harness and the dataset code it runs could read ~/.netrc (the W&B key),
    which `requests` sends to a matching host by itself, and the user's cloud credentials."""
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "nemotron"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    env = runner.harness_env(None, offline=False)
    assert env["HOME"] == str(tmp_path / "nemotron" / "harness-home") != os.environ["HOME"]
    assert (Path(env["HOME"]).stat().st_mode & 0o777) == 0o700
    assert env["HF_HOME"] == str(tmp_path / "user" / ".cache" / "huggingface")  # where the user's cache is
    assert env["NEMOTRON_HOME"] == str(tmp_path / "nemotron")  # lm-eval's task index, kept where it was
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runner.harness_env(None, offline=False)["HF_HOME"] == str(tmp_path / "xdg" / "huggingface")
    assert runner.harness_env(tmp_path / "given", offline=False)["HF_HOME"] == str(tmp_path / "given")


def test_a_second_claim_on_the_same_benchmark_waits_for_the_first(tmp_path, monkeypatch):
    """Two runs of one evaluation: the second waits (before serving), then goes on; it never fails."""
    monkeypatch.setattr(runner, "CLAIM_POLL_SECONDS", 0.1)
    cfg = load_config("local")
    (p,) = runner.plan(cfg, runner.select_tasks(cfg, ["gsm8k"]), MODEL, "m@1", tmp_path, None)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(2)",
                               str(Path(p.output_dir) / runner.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    Path(p.output_dir).mkdir(parents=True, exist_ok=True)
    assert holder.stdout.readline().strip() == "held"
    said, start = [], time.monotonic()
    with runner.claimed([p], said.append):
        waited = time.monotonic() - start
    holder.wait()
    assert 1.0 < waited < 10 and "another evaluation is running it" in said[0] and len(said) == 1


def test_the_harness_dies_with_the_process_that_started_it(tmp_path):
    """Issue 14: the reaper's stdin is a pipe only the flow holds; the flow gone (here: the pipe closed),
    the harness's whole process group is killed — a `kill -9` of the flow leaves no harness."""
    marker = f"sleep-{tmp_path.name}"
    reaper = subprocess.Popen([sys.executable, "-m", "nemotron.benchmarks.reaper", "bash", "-c",
                               f"exec -a {marker} sleep 300 & wait"], stdin=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 10
    while marker not in subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the harness never started"
        time.sleep(0.1)
    reaper.stdin.close()
    reaper.wait(timeout=10)
    time.sleep(0.5)
    assert marker not in subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout


def test_the_reaper_passes_the_harness_exit_code_through():
    for code in (0, 3):  # stdin held open until it exits, as the flow holds it
        proc = subprocess.Popen([sys.executable, "-m", "nemotron.benchmarks.reaper", "bash", "-c",
                                 f"echo out; exit {code}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        assert proc.wait(timeout=30) == code
        assert (proc.stdout.read(), proc.stderr.read()) == (b"out\n", b"")
        proc.stdin.close()


def test_an_upgraded_harness_is_a_new_key(monkeypatch):
    """Issue 15: results scored by another nemo-evaluator / lm-eval are not reused."""
    before = keyed().key
    monkeypatch.setattr(runner, "harness_versions", lambda: {"nvidia-lm-eval": "99.0"})
    assert keyed().key != before


def test_a_harness_line_longer_than_64_kib_is_read_not_fatal():
    """Issue 28: the harness's output was read with the StreamReader's own lines, which raise past 64 KiB (a
    response printed on one line ended the run); now lines come whole, a giant one in pieces."""
    import asyncio

    async def read(data: bytes, longest: int) -> list[bytes]:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        return [line async for line in runner.lines(stream, longest)]

    long = b"x" * 200_000
    assert asyncio.run(read(b"start\n" + long + b"\nend", 1 << 20)) == [b"start\n", long + b"\n", b"end"]
    assert asyncio.run(read(long + b"\n", 150_000)) == [long[:150_000], long[150_000:] + b"\n"]

