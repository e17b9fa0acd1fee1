import os

import pytest

from nemotron import wandb_export
from nemotron.config import load_config

KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_login(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(tmp_path / "env.toml"))
    (tmp_path / "env.toml").write_text("")


def login(tmp_path, host="api.wandb.ai"):
    (tmp_path / "netrc").write_text(f"machine {host}\n  login user\n  password {KEY}\n")


def cfg(*overrides):
    return load_config("default", list(overrides))


def test_not_configured_is_skipped_with_the_reason(tmp_path):
    where, why = wandb_export.target(cfg())
    assert where is None and why.startswith("W&B export skipped: no W&B project configured (add a [wandb] table")
    where, why = wandb_export.target(cfg("run.wandb.project=nemotron"))
    assert where is None and why == "W&B export skipped: not logged in (run `wandb login` or set WANDB_API_KEY)"


def test_env_toml_wandb_table_and_a_login_enable_the_export(tmp_path):
    (tmp_path / "env.toml").write_text('[wandb]\nproject = "nemotron"\nentity = "YOUR-TEAM"\n')
    login(tmp_path)
    assert wandb_export.target(cfg()) == (wandb_export.Target("YOUR-TEAM", "nemotron", offline=False), "")


def test_offline_and_disabled_modes(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_export.target(cfg("run.wandb.project=p"))[0] == wandb_export.Target(None, "p", offline=True)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_export.target(cfg("run.wandb.project=p")) == (None, "W&B export skipped: WANDB_MODE=disabled")


def test_login_detection_sets_the_key_and_says_so_without_printing_it(tmp_path):
    said = []
    assert wandb_export.detect_login(said.append) is False and said == []
    login(tmp_path)
    assert wandb_export.detect_login(said.append) is True
    assert said == ["[info] Detected W&B login, setting WANDB_API_KEY"]
    assert os.environ["WANDB_API_KEY"] == KEY
    os.environ.pop("WANDB_API_KEY")


def test_login_for_a_self_hosted_server(tmp_path, monkeypatch):
    login(tmp_path, host="wandb.example.com")
    assert wandb_export.api_key() is None
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert wandb_export.api_key() == KEY


def test_evaluation_id_is_stable_and_follows_model_and_configs():
    a = [{"name": "hellaswag", "task": "lm-evaluation-harness.hellaswag", "params": {"limit_samples": 3}},
         {"name": "gsm8k", "task": "lm-evaluation-harness.gsm8k", "params": {}}]
    same = wandb_export.evaluation_id("e/p/m:v3@d1", a)
    assert same == wandb_export.evaluation_id("e/p/m:v3@d1", list(reversed(a))) and same.startswith("eval-")
    assert same != wandb_export.evaluation_id("e/p/m:v4@d2", a)
    assert same != wandb_export.evaluation_id("e/p/m:v3@d1", [a[0], {**a[1], "params": {"limit_samples": 1}}])


def test_result_files_keep_results_and_samples_not_caches(tmp_path):
    for name in ("results.json", "manifest.json", "scores.md", "in-flight.json", "server.log", "server-2.log",
                 "gsm8k/results.yml", "gsm8k/run_eval.log",
                 "gsm8k/eval_factory_metrics.json", "gsm8k/m/results_2026.json", "gsm8k/m/samples_gsm8k_2026.jsonl",
                 "gsm8k/cache/responses/x", "gsm8k/lm_cache_rank0.db/cache.db", "gsm8k/response_stats_cache/cache.db"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    names = sorted(n for _, n in wandb_export.result_files(tmp_path, ["gsm8k"]))
    assert names == ["gsm8k/eval_factory_metrics.json", "gsm8k/m/results_2026.json", "gsm8k/m/samples_gsm8k_2026.jsonl",
                     "gsm8k/results.yml", "gsm8k/run_eval.log", "in-flight.json", "manifest.json", "results.json",
                     "scores.md", "server-2.log", "server.log"]
