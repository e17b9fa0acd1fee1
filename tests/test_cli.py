import re
import time

from tests import fake_wandb_api
from tests.helpers import REPO, SHARED_HF_HOME, hf_home, nemotron


def test_dry_run_shows_the_plan_and_touches_nothing(tmp_path):
    out = tmp_path / "results"
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", f"evaluation.output_dir={out}")
    assert r.returncode == 0, r.stderr
    assert "python -m vllm.entrypoints.openai.api_server --model" in r.stdout
    for task in ("adlr_mmlu", "hellaswag", "arc_challenge", "adlr_arc_challenge_llama_25_shot",
                 "adlr_winogrande_5_shot", "truthfulqa", "gsm8k"):
        assert f"type: lm-evaluation-harness.{task}" in r.stdout
    assert not out.exists()
    assert "# warning" not in r.stdout  # the managed venv's vLLM: its version is in the key


def test_dry_run_warns_that_an_engine_from_the_path_is_never_reused():
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "deployment.venv=null")
    assert r.returncode == 0, r.stderr
    assert ("# warning: the vllm version is unknown (the server node's PATH): this run's results are scored anew "
            "and never reused") in r.stdout


def test_dry_run_production_config_redacts_secrets():
    r = nemotron("nano3", "eval", "--dry-run", "--count", "deployment.env.WANDB_API_KEY=sekrit-123")
    assert r.returncode == 0, r.stderr
    assert "sekrit-123" not in r.stdout and "WANDB_API_KEY: '***'" in r.stdout
    # the size of the full suite before a four-hour job: lm-eval's count on the datasets (MMLU's 14,042 test
    # questions, HellaSwag's 10,042 × 4 endings, ARC-Challenge's 1,172 questions with 3-5 choices)
    assert ("# requests: adlr_mmlu 14,042 · hellaswag 40,168 · arc_challenge 4,687 · suite 25,256 documents, "
            "58,897 requests") in r.stdout
    assert "size: 10,042 documents, 40,168 requests" in r.stdout
    assert "vllm serve --model" in r.stdout and "--tensor-parallel-size 4" in r.stdout


def test_a_dry_run_with_no_data_cache_and_no_hub_ends_in_seconds_and_writes_nothing(tmp_path):
    """Issue 29: it loads neither lm-eval nor a dataset (a minute where the hub does not answer): what is not counted
    yet says so; and it leaves NEMOTRON_HOME as it found it (no request-count cache, task index or data view)."""
    home = tmp_path / "nemotron-home"
    home.mkdir()
    env = {"NEMOTRON_HOME": str(home), "HF_HOME": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    started = time.monotonic()
    r = nemotron("nano3", "eval", "--dry-run", env=env)
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert took < 15, took
    assert "# requests: adlr_mmlu unknown · hellaswag unknown · arc_challenge unknown" in r.stdout
    assert "size: 'unknown (not counted yet: a run counts it as it starts; `--dry-run --count` counts it now" \
        in r.stdout
    assert list(home.iterdir()) == []
    alone = nemotron("nano3", "eval", "--count", env=env)
    assert alone.returncode == 2 and "--count goes with --dry-run" in alone.stderr, alone.stderr


def test_typo_override_exits_2_with_suggestion():
    r = nemotron("nano3", "eval", "-c", "local", "deployment.tensor_paralel_size=8")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: unknown config key deployment.tensor_paralel_size: "
                                "did you mean deployment.tensor_parallel_size?")


def test_unknown_task_exits_2_and_lists_valid_names():
    r = nemotron("nano3", "eval", "-c", "local", "-t", "nope")
    assert r.returncode == 2
    assert "unknown task 'nope'; valid tasks:" in r.stderr and "hellaswag" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_openbookqa_offline_is_refused_before_serving():
    home = hf_home() or SHARED_HF_HOME
    start = time.monotonic()
    r = nemotron("nano3", "eval", "-c", "local", "-t", "openbookqa", env={"HF_HOME": str(home)})
    assert r.returncode == 2
    assert "task 'openbookqa' needs dataset openbookqa (main)" in r.stderr
    assert time.monotonic() - start < 10  # refused at plan time: no server was launched


def test_missing_model_artifact_exits_2_naming_how_to_list_them(tmp_path):
    """Resolved in the flow (fake `wandb.Api`, nothing found): one line, exit 2, no server started.
    The `wandb login` key in the netrc is detected and announced, and never printed."""
    key = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
    env = {**fake_wandb_api.subprocess_env(tmp_path, {}), "NETRC": str(tmp_path / "netrc"), "WANDB_API_KEY": "",
           "NEMOTRON_HOME": str(tmp_path / "home"), "HF_HOME": str(hf_home())}
    r = nemotron("nano3", "eval", "-c", "local", "-t", "gsm8k", "run.model=rl:v9", "run.wandb.entity=team",
                 "run.wandb.project=nemotron", f"evaluation.output_dir={tmp_path / 'out'}", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: model artifact team/nemotron/nano3-rl-model:v9 (run.model='rl:v9') not found in W&B: "
                    "artifact membership 'nano3-rl-model:v9' not found in 'team/nemotron'; check available "
                    "artifacts: wandb artifact ls team/nemotron"]
    assert "[info] Detected W&B login, setting WANDB_API_KEY" in r.stdout + r.stderr
    assert key not in r.stdout + r.stderr
    assert not (tmp_path / "home" / "nemorun").exists()  # no NeMo-Run experiment: nothing was launched
    assert not (tmp_path / "out").exists()


def test_dry_run_names_the_artifact_without_looking_it_up(tmp_path):
    env = {**fake_wandb_api.subprocess_env(tmp_path, {}), "WANDB_MODE": "offline"}
    r = nemotron("nano3", "eval", "--dry-run", "run.model=sft:3", "run.wandb.entity=team",
                 "run.wandb.project=nemotron", env=env)
    assert r.returncode == 0, r.stderr
    assert "artifact: team/nemotron/nano3-sft-model:v3" in r.stdout
    assert "checkpoint_path: resolved in the flow through the W&B API" in r.stdout
    assert "wandb_export: one run in team/nemotron (offline)" in r.stdout


def test_checkpoint_path_skips_wandb_entirely(tmp_path):
    env = {**fake_wandb_api.subprocess_env(tmp_path, {}), "WANDB_MODE": "disabled"}
    r = nemotron("nano3", "eval", "--dry-run", f"deployment.checkpoint_path={tmp_path}", env=env)
    assert r.returncode == 0, r.stderr
    assert "kind: path" in r.stdout and f"checkpoint_path: {tmp_path}" in r.stdout
    assert "wandb_export: 'W&B export skipped: WANDB_MODE=disabled'" in r.stdout


def test_unknown_profile_exits_2_listing_profiles():
    example = str(REPO / "config" / "env.example.toml")
    r = nemotron("nano3", "eval", "--run", "nope", "--dry-run", env={"NEMOTRON_ENV_FILE": example})
    assert r.returncode == 2
    assert "unknown profile 'nope'" in r.stderr and "valid profiles: YOUR-CLUSTER, YOUR-CLUSTER-short, local-slurm" \
        in r.stderr


GPU_ENV = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")}  # YOUR-CLUSTER: ssh, 8 GPUs, image


def test_dry_run_on_a_gpu_cluster_shows_container_job_and_squash():
    r = nemotron("nano3", "eval", "--dry-run", "--run", "YOUR-CLUSTER", "--force-squash",
                 "run.model=/lustre/ckpt/rl", "deployment.tensor_parallel_size=8", env=GPU_ENV)
    assert r.returncode == 0, r.stderr
    sqsh = "/lustre/fsw/users/myuser/.nemotron/containers/vllm_vllm_openai_latest.sqsh"
    squash = r.stdout[r.stdout.index("# container squash (on the cluster, always: --force-squash)"):].splitlines()[1]
    assert squash.startswith(f"mkdir -p /lustre/fsw/users/myuser/.nemotron/containers && flock {sqsh}.lock bash -c ")
    assert f"rm -f {sqsh} && salloc --account=YOUR-ACCOUNT --partition=batch --nodes=1" in squash
    partial = sqsh.removesuffix(".sqsh") + ".partial.sqsh"  # renamed to the image once complete
    assert f"enroot import --output {partial} docker://vllm/vllm-openai:latest && mv -f {partial} {sqsh}" in squash
    sbatch = r.stdout[r.stdout.index("# sbatch script NeMo-Run would submit"):]
    assert "#SBATCH --gpus-per-node=8" in sbatch and "#SBATCH --time=04:00:00" in sbatch
    assert f"--container-image {sqsh} --container-mounts /lustre:/lustre," in sbatch
    assert "bash /nemo_run/scripts/server.sh" in sbatch  # the job dir is mounted at /nemo_run
    assert "--model /lustre/ckpt/rl" in sbatch and "--tensor-parallel-size 8" in sbatch  # path used as is
    assert "VIRTUAL_ENV" not in sbatch  # the container brings its own vLLM


def test_parallelism_beyond_the_profiles_gpus_exits_2():
    r = nemotron("nano3", "eval", "--dry-run", "--run", "YOUR-CLUSTER", "deployment.tensor_parallel_size=16",
                 env=GPU_ENV)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: deployment.tensor_parallel_size=16 x data_parallel_size=1 needs 16 GPUs, "
                                "but profile 'YOUR-CLUSTER' gives 8 per node x 1 node(s) = 8")


def test_force_squash_without_a_container_exits_2():
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--force-squash")
    assert r.returncode == 2 and "--force-squash re-imports a container image" in r.stderr


def test_overrides_go_before_between_and_after_options(tmp_path):
    r = nemotron("nano3", "eval", "run.model=/ckpt/a", "-c", "local", "-t", "gsm8k",
                 f"evaluation.output_dir={tmp_path}", "--dry-run", "evaluation.retries=4")
    assert r.returncode == 0, r.stderr
    assert "model: /ckpt/a" in r.stdout and f"output_dir: {tmp_path}" in r.stdout and "retries: 4" in r.stdout
    bad = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--nope")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: nemotron: unrecognized arguments: --nope"


def test_a_task_whose_harness_fetches_its_data_is_refused_offline_in_one_line():
    """simple_evals downloads AIME at run time: offline (the local config's cache) it is refused before anything
    starts, in one line naming what it would fetch; bfcl ships its data and plans offline, its harness and environment
    named."""
    r = nemotron("nano3", "eval", "-c", "local", "-t", "AIME_2025", "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "'AIME_2025' runs on the simple_evals harness, which fetches its data at run time (the Hugging Face " \
           "dataset opencompass/AIME2025 (AIME2025-I, AIME2025-II)), and this run is offline" in r.stderr
    assert "evaluation.hf_offline=false" in r.stderr
    r = nemotron("nano3", "eval", "-c", "local", "-t", "healthbench_hard", "--dry-run")  # a file, not a dataset
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "(https://openaipublic.blob.core.windows.net/simple-evals/healthbench/hard_2025-05-08-21-00-10.jsonl)" \
           in r.stderr
    r = nemotron("nano3", "eval", "-c", "local", "-t", "bfclv3_ast_prompting", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert re.search(r"harness: 'bfcl in \S+/harness-envs/bfcl-\w+ \(nemo-evaluator 0\.2\.8, nvidia-bfcl 26\.3\)",
                     r.stdout) and "size: unknown (the bfcl harness is not counted before it runs)" in r.stdout


def test_dry_run_masks_secret_values_not_words_that_contain_token(tmp_path):
    r = nemotron("nano3", "eval", "-c", "local", "-t", "hellaswag", "--dry-run",
                 "evaluation.nemo_evaluator_config.config.params.extra.tokenizer=/my/tokenizer",
                 "deployment.served_model_name=${oc.env:HF_TOKEN}", env={"HF_TOKEN": "hf_dryrunsecret42"})
    assert r.returncode == 0, r.stderr
    assert "tokenizer: /my/tokenizer" in r.stdout and "hf_dryrunsecret42" not in r.stdout
    assert "--served-model-name *** " in r.stdout and "model_id: ***" in r.stdout


def test_a_run_that_names_no_profile_serves_where_run_profile_says(tmp_path):
    """Issue 15: the default profile (run.profile, from NEMOTRON_PROFILE: the worker's setting) applies to runs that
    name none; --run still wins."""
    env = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml"), "NEMOTRON_PROFILE": "local-slurm"}
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", f"evaluation.output_dir={tmp_path}", env=env)
    assert r.returncode == 0, r.stderr
    assert "where: local-slurm (Slurm, tunnel local)" in r.stdout and "#SBATCH --partition=batch" in r.stdout
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--run", "local-slurm-ssh", env=env)
    assert "where: local-slurm-ssh (Slurm, tunnel ssh)" in r.stdout
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", env={**env, "NEMOTRON_PROFILE": "nope"})
    assert r.returncode == 2 and r.stderr.startswith("error: unknown profile 'nope' in ")



def test_replicas_here_on_one_fixed_port_exit_2_and_the_dry_run_shows_how_many():
    r = nemotron("nano3", "eval", "-c", "local", "deployment.replicas=2", "deployment.port=8000")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: deployment.port=8000 with deployment.replicas=2 on this machine: the replicas cannot all take that "
        "port; set deployment.port=0 (each picks a free one)")
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "deployment.replicas=3")
    assert r.returncode == 0
    assert "replicas: 3 jobs like the one below, requests spread over them by the gate" in r.stdout


def test_cancel_needs_the_run_it_cancels():
    """Issue 28: `eval cancel` never picks the latest run by itself: without RUN it is bad input (exit 2), one line."""
    r = nemotron("nano3", "eval", "cancel")
    assert r.returncode == 2
    assert r.stderr.startswith("error: usage: nemotron nano3 eval cancel RUN (a flow run id, id prefix or name, or a "
                               "Slurm job id that --batch submitted)") and r.stderr.count("\n") == 1, r.stderr
