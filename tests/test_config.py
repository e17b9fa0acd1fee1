import pytest

from nemotron.config.schema import load_config
from nemotron.errors import ConfigError


def test_default_yaml_is_the_spec_production_config():
    cfg = load_config("default")
    assert cfg.run.model == "rl:latest"
    assert cfg.deployment.type == "vllm"
    assert cfg.deployment.tensor_parallel_size == 4
    assert cfg.deployment.data_parallel_size == 1
    assert cfg.deployment.extra_args == "--max-model-len 32768"
    assert [t.name for t in cfg.evaluation.tasks] == ["adlr_mmlu", "hellaswag", "arc_challenge"]


def test_export_wandb_follows_run_wandb():
    cfg = load_config("default", ["run.wandb.entity=team", "run.wandb.project=nemotron"])
    assert (cfg.export.wandb.entity, cfg.export.wandb.project) == ("team", "nemotron")


def test_wandb_site_from_env_toml_then_environment(monkeypatch, tmp_path):
    (tmp_path / "env.toml").write_text('[wandb]\nproject = "nemotron"\nentity = "YOUR-TEAM"\n')
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(tmp_path / "env.toml"))
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    cfg = load_config("default")
    assert (cfg.export.wandb.entity, cfg.export.wandb.project) == ("YOUR-TEAM", "nemotron")
    (tmp_path / "env.toml").write_text("")
    assert load_config("default").export.wandb.entity == "env-team"
    assert load_config("default", ["run.wandb.entity=cli"]).export.wandb.entity == "cli"


@pytest.mark.parametrize("override, key, value", [
    ("evaluation.nemo_evaluator_config.config.params.limit_samples=10", "limit_samples", 10),
    ("evaluation.nemo_evaluator_config.config.params.request_timeout=7200", "request_timeout", 7200),
])
def test_spec_override_examples(override, key, value):
    params = load_config("default", [override]).evaluation.nemo_evaluator_config.config.params
    assert getattr(params, key) == value


def test_tensor_parallel_override():
    assert load_config("default", ["deployment.tensor_parallel_size=8"]).deployment.tensor_parallel_size == 8


def test_typo_names_the_closest_key():
    with pytest.raises(ConfigError, match=r"did you mean deployment\.tensor_parallel_size\?"):
        load_config("default", ["deployment.tensor_paralel_size=8"])


def test_nested_typo_names_the_closest_key():
    with pytest.raises(ConfigError, match=r"params\.limit_samples\?"):
        load_config("default", ["evaluation.nemo_evaluator_config.config.params.limit_sample=3"])


def test_bad_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"deployment\.port.*'abc'"):
        load_config("default", ["deployment.port=abc"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="not key=value"):
        load_config("default", ["deployment.tensor_parallel_size"])


def test_list_items_by_index():
    cfg = load_config("default", ["evaluation.tasks.0.name=gsm8k"])
    assert cfg.evaluation.tasks[0].name == "gsm8k"


def test_local_extends_default():
    cfg = load_config("local")
    assert cfg.run.model == "builtin:smollm2-135m-instruct"
    assert cfg.export.wandb.entity is None  # inherited from default.yaml
    assert len(cfg.evaluation.tasks) == 7


def test_unknown_config_name_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: default, local"):
        load_config("nope")


def test_hf_home_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = load_config("default")
    assert cfg.evaluation.hf_home == str(tmp_path) and cfg.offline
    assert not load_config("default", ["evaluation.hf_offline=false"]).offline
