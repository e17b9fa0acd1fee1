import time

from tests.helpers import REPO, SHARED_HF_HOME, hf_home, nemotron


def test_dry_run_is_fast_shows_the_plan_and_touches_nothing(tmp_path):
    out = tmp_path / "results"
    start = time.monotonic()
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", f"evaluation.output_dir={out}")
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert elapsed < 5, f"dry run took {elapsed:.1f} s"
    assert "python -m vllm.entrypoints.openai.api_server --model" in r.stdout
    for task in ("adlr_mmlu", "hellaswag", "arc_challenge", "adlr_arc_challenge_llama_25_shot",
                 "adlr_winogrande_5_shot", "truthfulqa", "gsm8k"):
        assert f"type: lm-evaluation-harness.{task}" in r.stdout
    assert not out.exists()


def test_dry_run_production_config_redacts_secrets():
    r = nemotron("nano3", "eval", "--dry-run", "deployment.env.WANDB_API_KEY=sekrit-123")
    assert r.returncode == 0, r.stderr
    assert "sekrit-123" not in r.stdout and "WANDB_API_KEY: '***'" in r.stdout
    assert "vllm serve --model" in r.stdout and "--tensor-parallel-size 4" in r.stdout


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


def test_wandb_reference_is_a_clear_error_for_now():
    r = nemotron("nano3", "eval", "run.model=rl:latest")
    assert r.returncode == 2 and "run.model='rl:latest' is a W&B artifact reference" in r.stderr


def test_unknown_profile_exits_2_listing_profiles():
    example = str(REPO / "config" / "env.example.toml")
    r = nemotron("nano3", "eval", "--run", "nope", "--dry-run", env={"NEMOTRON_ENV_FILE": example})
    assert r.returncode == 2
    assert "unknown profile 'nope'" in r.stderr and "valid profiles: YOUR-CLUSTER, YOUR-CLUSTER-short, local-slurm" \
        in r.stderr
