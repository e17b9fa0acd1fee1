"""deployment.type on real servers: the generic command template (vLLM's OpenAI entrypoint written as a template)
here and on Slurm, and `none` against a vLLM this test starts itself, behind an API key."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from nemotron.serving import endpoints, runtime
from tests.helpers import REPO, hf_home, nemotron, scores, squeue
from tests.sentinels import Sentinels, watch_harnesses

pytestmark = pytest.mark.e2e
MODEL = str(runtime.builtin_model_dir("smollm2-135m-instruct"))
TEMPLATE = ("python -m vllm.entrypoints.openai.api_server --model {checkpoint} --served-model-name {served_model_name} "
            "--host {host} --port {port} --tensor-parallel-size {tensor_parallel_size}")


def limited(tmp_path) -> list[str]:
    return ["evaluation.nemo_evaluator_config.config.params.limit_samples=1", f"evaluation.output_dir={tmp_path}",
            f"evaluation.hf_home={hf_home()}"]


@pytest.mark.parametrize("where", [pytest.param([], id="local"),
                                   pytest.param(["--run", "local-slurm"], id="slurm", marks=pytest.mark.cluster)])
def test_generic_serves_from_a_command_template(tmp_path, where):
    task = "hellaswag" if not where else "gsm8k"  # the log-likelihood path here, generation on Slurm
    r = nemotron("nano3", "eval", "-c", "local", "-t", task, *where, "deployment.type=generic",
                 f"deployment.command={TEMPLATE}", *limited(tmp_path), timeout=600,
                 env={"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert f"[serve] submitting python -m vllm.entrypoints.openai.api_server --model {MODEL} --served-model-name " \
           "smollm2-135m-instruct --host 127.0.0.1 --port \"$PORT\" --tensor-parallel-size 1 --dtype float32" in out
    assert any(b == task for b, _ in scores(out)), out[-2000:]
    (manifest,) = tmp_path.glob("*/*/manifest.json")
    assert json.loads(manifest.read_text())["config"]["deployment"]["type"] == "generic"
    assert not squeue()


@pytest.fixture(scope="module")
def running_vllm(tmp_path_factory):
    """A vLLM the user runs, behind an API key: the evaluation must neither start nor stop it."""
    port, key = endpoints.free_port(), "endpoint-key-5f1e0c2a9b"
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    python = runtime.serve_venv() / "bin" / "python"
    proc = subprocess.Popen([str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", MODEL,
                             "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                             "--api-key", key, "--dtype", "float32", "--max-model-len", "4096", "--enforce-eager"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                                 "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not endpoints.healthy(f"{url}/health"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(2)
    yield url, key
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def test_none_evaluates_a_running_endpoint_with_its_key_and_leaves_it_running(tmp_path, running_vllm):
    url, key = running_vllm
    running = ["deployment.type=none", f"deployment.url={url}/v1", "deployment.served_model_name=smollm2",
               "deployment.api_key_env=ENDPOINT_API_KEY", "run.model=builtin:smollm2-135m-instruct"]
    wrong = nemotron("nano3", "eval", "-c", "local", "-t", "gsm8k", *running[:-2],
                     "deployment.api_key_env=ENDPOINT_KEY", *limited(tmp_path), env={"ENDPOINT_API_KEY": key})
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: deployment.api_key_env=ENDPOINT_KEY names a "
                                                             "variable that is not set here")
    assert not any(tmp_path.iterdir())  # refused before anything was written

    r = nemotron("nano3", "eval", "-c", "local", "-t", "hellaswag", "-t", "gsm8k", *running, *limited(tmp_path),
                 env={"ENDPOINT_API_KEY": key}, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert f"[serve] the running endpoint {url} (deployment.type none): nothing is launched or stopped" in out
    assert "[serve] submitting" not in out and "[serve] stopped" not in out
    assert {b for b, _ in scores(out)} == {"hellaswag", "gsm8k"}, out[-2000:]
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    (run_dir,) = {m.parent for m in tmp_path.glob("*/*/manifest.json")}
    assert not [p for p in run_dir.rglob("*") if p.is_file() and key in p.read_text(errors="replace")]
    gate = json.loads((run_dir / "in-flight.json").read_text())[0]
    assert gate["upstream"] == url and gate["benchmarks"]["gsm8k"]["requests"] >= 1


def test_a_run_with_the_endpoints_key_and_a_failing_benchmark_leaves_no_secret_anywhere(tmp_path, running_vllm):
    """Issue 27, the `-c local` path against a running endpoint: the machine's secrets (tests/sentinels.py), the
    endpoint's key (deployment.api_key_env) and a benchmark that fails with a secret inside its error (its
    tokenizer read from OPENAI_KEY: lm-eval prints it, and cannot load it). The failure is reported, masked; no
    secret is in the run's files, ~/.cache/nemotron, the Prefect database or a harness's environment."""
    url, key = running_vllm
    started = time.time() - 1
    sentinels = Sentinels("none")
    hellaswag = "evaluation.tasks.1"  # in local.yaml
    with watch_harnesses([*sentinels.values(), key]) as harnesses:
        r = nemotron("nano3", "eval", "-c", "local", "-t", "hellaswag", "-t", "gsm8k", "deployment.type=none",
                     f"deployment.url={url}/v1", "deployment.served_model_name=smollm2",
                     "deployment.api_key_env=ENDPOINT_API_KEY", "run.model=builtin:smollm2-135m-instruct",
                     *limited(tmp_path), f"{hellaswag}.retries=0",
                     f"{hellaswag}.nemo_evaluator_config.config.params.extra.tokenizer=/absent/${{oc.env:OPENAI_KEY}}",
                     f"{hellaswag}.nemo_evaluator_config.config.params.extra.tokenizer_backend=huggingface",
                     "export.wandb.project=sentinels", env={**sentinels.env, "ENDPOINT_API_KEY": key,
                                                            "WANDB_MODE": "offline"}, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    assert {b for b, _ in scores(out)} == {"gsm8k"}, out[-3000:]
    (run_dir,) = {m.parent for m in tmp_path.glob("*/*/manifest.json")}
    (failed,) = [x for x in json.loads((run_dir / "results.json").read_text())["results"] if x["status"] != "completed"]
    assert failed["benchmark"] == "hellaswag" and "***" in failed["error"], failed
    assert "***" in (run_dir / "hellaswag" / "run_eval.log").read_text()  # the harness printed the secret: masked
    values = [*sentinels.values(), key]
    assert [v for v in values if v in out] == []
    assert sentinels.found_in(tmp_path) == [] and not [p for p in tmp_path.rglob("*") if p.is_file()
                                                       and key.encode() in p.read_bytes()]
    assert sentinels.found_in(runtime.home(), since=started) == [] and sentinels.found_in_prefect() == []
    # the tokenizer is a harness parameter: nemo-evaluator renders it into lm-eval's command line (README), the one
    # place it shows; no harness's environment holds a secret
    assert len(harnesses.seen) >= 2
    assert {f for f in harnesses.found if f[0] == "environ" or f[2] != sentinels.env["OPENAI_KEY"]} == set(), \
        harnesses.found
    assert all("lm-eval" in program or program.split()[0] in ("bash", "sh") for _, program, _ in harnesses.found), \
        harnesses.found  # lm-eval, and the shell nemo-evaluator starts it with


def test_a_hugging_face_model_id_is_served_from_the_hub_cache_offline(tmp_path):
    """`run.model=hf:ORG/NAME`: the engine loads it by id (here from a hub cache built from the built-in model, with
    HF_HUB_OFFLINE=1), the log-likelihood task tokenizes with it by id, and its identity is the cached commit."""
    import shutil
    from pathlib import Path

    home = tmp_path / "hf-home"
    shutil.copytree(hf_home() / "datasets", home / "datasets")  # the harness writes beside the data
    for p in [home, *home.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    commit = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"
    repo = home / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in Path(MODEL).iterdir():
        (repo / "snapshots" / commit / f.name).symlink_to(f)
    r = nemotron("nano3", "eval", "-c", "local", "-t", "hellaswag", "run.model=hf:HuggingFaceTB/SmolLM2-135M-Instruct",
                 *limited(tmp_path / "out"), f"evaluation.hf_home={home}", timeout=600,
                 env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert f"model hf:HuggingFaceTB/SmolLM2-135M-Instruct → commit {commit} in the Hugging Face cache" in out
    assert "--model HuggingFaceTB/SmolLM2-135M-Instruct --served-model-name" in out
    assert f"--revision {commit}" in out  # issue 26: the engine loads the commit that is recorded
    assert ("hellaswag", "acc") in scores(out), out[-2000:]
    (manifest,) = (tmp_path / "out").glob("*/*/manifest.json")
    model = json.loads(manifest.read_text())["model"]
    assert (model["kind"], model["digest"], model["slug"]) == ("hf", commit, "smollm2-135m-instruct")


def test_chat_tasks_with_a_system_prompt_are_scored_anew_and_not_comparable_with_those_without(tmp_path, running_vllm):
    """Issue 30: gsm8k_cot_instruct and arc_challenge_chat through /v1/chat/completions, then the same with
    evaluation.chat.system_prompt. The prompt reaches the server in every request (through nemo-evaluator's adapter,
    then the gate), the benchmarks get new keys (not reused from the first run's store) and `eval compare` finds
    every metric not comparable, naming the system prompt."""
    url, key = running_vllm
    prompt = 'Answer "briefly"; show the final answer.'
    runs = []
    for extra in ([], [f"evaluation.chat.system_prompt='{prompt}'", "evaluation.keep_requests=true"]):
        r = nemotron("nano3", "eval", "-c", "local", "-t", "gsm8k_cot_instruct", "-t", "arc_challenge_chat",
                     "deployment.type=none", f"deployment.url={url}/v1", "deployment.served_model_name=smollm2",
                     "deployment.api_key_env=ENDPOINT_API_KEY", "run.model=builtin:smollm2-135m-instruct",
                     *limited(tmp_path), "evaluation.nemo_evaluator_config.config.params.max_new_tokens=48", *extra,
                     env={"ENDPOINT_API_KEY": key}, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        assert {b for b, _ in scores(out)} == {"gsm8k_cot_instruct", "arc_challenge_chat"}, out[-2000:]
        runs.append(sorted(tmp_path.glob("*/*/results.json"), key=lambda p: p.stat().st_mtime)[-1].parent)
    plain, prompted = (json.loads((run / "results.json").read_text())["results"] for run in runs)
    assert not any(b["reused"] for b in prompted)
    assert {b["output_dir"] for b in plain}.isdisjoint(b["output_dir"] for b in prompted)
    for name in ("gsm8k_cot_instruct", "arc_challenge_chat"):
        sent = [json.loads(line) for line in (runs[1] / "requests" / f"{name}.jsonl").read_text().splitlines()]
        assert sent and all(s["path"] == "/v1/chat/completions" for s in sent)
        assert all(s["body"]["messages"][0] == {"role": "system", "content": prompt} for s in sent), sent[0]
    apart = nemotron("nano3", "eval", "compare", *map(str, runs))
    assert apart.returncode == 0, apart.stderr
    rows = [line for line in apart.stdout.splitlines() if line.startswith(("gsm8k_cot_instruct", "arc_challenge_chat"))]
    assert rows and all("not comparable: chat.system_prompt unset → 'Answer \"briefly\"" in row for row in rows), \
        apart.stdout
