import pytest

from nemotron import models, runtime
from nemotron.config import load_config
from nemotron.errors import ConfigError


def ref(*overrides):
    return models.parse(load_config("default", list(overrides)))


def test_stage_alias_is_a_wandb_reference_and_is_not_resolved_eagerly():
    r = ref()
    assert (r.kind, r.path, r.slug) == ("wandb", None, "rl-latest")


def test_full_artifact_name_slug():
    assert ref("run.model=team/nemotron/nano3-rl-model:v2").slug == "nano3-rl-model-v2"


def test_checkpoint_path_skips_wandb(tmp_path):
    r = ref(f"deployment.checkpoint_path={tmp_path}")
    assert (r.kind, r.path) == ("path", str(tmp_path))
    assert models.resolve(r) == r


def test_plain_path(tmp_path):
    r = ref(f"run.model={tmp_path}")
    assert r.kind == "path" and r.path == str(tmp_path) and r.slug == tmp_path.name.lower()


def test_builtin_model_path_is_known_without_provisioning():
    r = ref("run.model=builtin:smollm2-135m-instruct")
    assert r.kind == "builtin" and r.path == str(runtime.builtin_model_dir("smollm2-135m-instruct"))


def test_unknown_builtin_lists_valid():
    with pytest.raises(ConfigError, match="valid: builtin:smollm2-135m-instruct"):
        ref("run.model=builtin:gpt5")
