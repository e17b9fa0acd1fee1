import pytest

from nemotron.config import models
from nemotron.config.schema import load_config
from nemotron.errors import ConfigError
from nemotron.serving import runtime
from tests import fake_wandb_api

RL_V3 = {"qualified_name": "team/nemotron/nano3-rl-model:v3", "digest": "d" * 32, "aliases": ["latest", "step_100"],
         "metadata": {"step": 100, "absolute_path": "/lustre/ckpt/rl/step_100"},
         "references": ["file:///lustre/ckpt/rl/step_100"]}


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


@pytest.fixture(autouse=True)
def wandb_site(monkeypatch, tmp_path):
    """No env.toml [wandb] and no WANDB_* from the machine running the tests."""
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(tmp_path / "env.toml"))
    (tmp_path / "env.toml").write_text('[wandb]\nentity = "team"\nproject = "nemotron"\n')
    for var in ("WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("given, artifact", [
    ("rl:latest", "team/nemotron/nano3-rl-model:latest"),
    ("sft:latest", "team/nemotron/nano3-sft-model:latest"),
    ("pretrain:latest", "team/nemotron/nano3-pretrain-model:latest"),
    ("rl:v2", "team/nemotron/nano3-rl-model:v2"),
    ("rl:2", "team/nemotron/nano3-rl-model:v2"),
    ("rl", "team/nemotron/nano3-rl-model:latest"),
    ("my-ckpt:best", "team/nemotron/my-ckpt:best"),
    ("other/nano3-rl-model:v1", "team/other/nano3-rl-model:v1"),
    ("lab/proj/nano3-sft-model:v7", "lab/proj/nano3-sft-model:v7"),
])
def test_model_references_name_artifacts_in_the_configured_project(given, artifact):
    r = ref(f"run.model={given}")
    assert (r.kind, r.artifact, r.path) == ("wandb", artifact, None)


def test_stage_to_artifact_mapping_is_configurable():
    assert ref("run.model=rl:v4", "run.artifacts.rl=my-rl-ckpts").artifact == "team/nemotron/my-rl-ckpts:v4"


def test_entity_and_project_from_the_environment_when_env_toml_has_none(monkeypatch, tmp_path):
    (tmp_path / "env.toml").write_text("")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    monkeypatch.setenv("WANDB_PROJECT", "env-proj")
    assert ref().artifact == "env-team/env-proj/nano3-rl-model:latest"
    assert ref("run.wandb.project=cli-proj").artifact == "env-team/cli-proj/nano3-rl-model:latest"


def test_malformed_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="neither a checkpoint path nor a W&B artifact reference"):
        ref("run.model=a/b/c/d:v1")


def test_artifact_resolves_to_its_recorded_checkpoint_path_without_download(monkeypatch):
    api = fake_wandb_api.install(monkeypatch, {"team/nemotron/nano3-rl-model:latest": RL_V3})
    r = models.resolve(ref(), say=lambda m: None, local=False)
    assert api.calls == ["team/nemotron/nano3-rl-model:latest"]
    assert (r.path, r.resolved, r.digest) == ("/lustre/ckpt/rl/step_100", "team/nemotron/nano3-rl-model:v3", "d" * 32)
    assert r.collection == "nano3-rl-model" and "step_100" in r.aliases
    assert r.identity == "team/nemotron/nano3-rl-model:v3@" + "d" * 32


@pytest.mark.parametrize("metadata, references, path", [
    ({"absolute_path": "/lustre/sft/iter_0001000"}, [], "/lustre/sft"),  # Megatron: the iteration's parent
    ({}, ["file:///lustre/rl/step_5"], "/lustre/rl/step_5"),  # checksum=False: one directory reference
    ({}, ["file:///lustre/m/config.json", "file:///lustre/m/tokenizer/tok.json"], "/lustre/m"),
    ({}, [], None),
])
def test_checkpoint_path_from_metadata_or_references(metadata, references, path):
    assert models.checkpoint_path(metadata, references) == path


def test_missing_artifact_says_how_to_list_them(monkeypatch):
    fake_wandb_api.install(monkeypatch, {})
    with pytest.raises(ConfigError) as e:
        models.resolve(ref("run.model=rl:v9"), say=lambda m: None)
    assert "team/nemotron/nano3-rl-model:v9 (run.model='rl:v9') not found in W&B" in str(e.value)
    assert str(e.value).endswith("check available artifacts: wandb artifact ls team/nemotron")


def test_artifact_holding_files_is_downloaded_only_for_a_local_run(monkeypatch, tmp_path):
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    spec = {"qualified_name": "team/nemotron/tiny:v0", "digest": "e" * 32, "files": {"config.json": "{}"}}
    fake_wandb_api.install(monkeypatch, {"team/nemotron/tiny:v0": spec})
    with pytest.raises(ConfigError, match="holds its files in W&B .* deployment.checkpoint_path"):
        models.resolve(ref("run.model=tiny:v0"), say=lambda m: None, local=False)
    r = models.resolve(ref("run.model=tiny:v0"), say=lambda m: None, local=True)
    assert r.path == str(tmp_path / "home" / "artifacts" / "team" / "nemotron" / "tiny-v0")
    assert (tmp_path / "home/artifacts/team/nemotron/tiny-v0/config.json").read_text() == "{}"


def test_not_logged_in_is_a_config_error(monkeypatch):
    import wandb

    def refuse(*a, **k):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "Api", refuse)
    with pytest.raises(ConfigError, match="W&B is not usable: No API key configured.*wandb login"):
        models.resolve(ref(), say=lambda m: None)


@pytest.mark.parametrize("overrides, stage, series", [
    (["run.model=rl:v2"], "rl", "nano3-rl-model"),
    (["run.model=lab/proj/nano3-sft-model:v7"], "sft", "nano3-sft-model"),  # named in full: still the sft stage
    (["run.model=rl:v2", "run.artifacts.rl=my-rl"], "rl", "my-rl"),
    (["run.model=my-ckpt:best"], None, "my-ckpt"),
    (["run.model=builtin:smollm2-135m-instruct"], None, "smollm2-135m-instruct"),
])
def test_stage_and_series_tell_which_line_of_models_an_evaluation_belongs_to(overrides, stage, series):
    r = ref(*overrides)
    assert (r.stage, r.series) == (stage, series)
    assert r.tags == [f"model:{r.artifact or r.ref}"] + ([f"stage:{stage}"] if stage else [])


def test_resolved_version_is_the_model_tag(monkeypatch):
    fake_wandb_api.install(monkeypatch, {"team/nemotron/nano3-rl-model:latest": RL_V3})
    r = models.resolve(ref(), say=lambda m: None, local=False)
    assert r.tags == ["model:team/nemotron/nano3-rl-model:v3", "stage:rl"] and r.record()["stage"] == "rl"


def test_a_checkpoint_written_again_at_any_depth_is_a_new_identity(tmp_path):
    """Issue 15: a new `iter_N/` (or a shard rewritten) inside the folder changes the identity, not only its
    top-level files."""
    import os

    ckpt = tmp_path / "ckpt"
    (ckpt / "iter_0000100").mkdir(parents=True)
    (ckpt / "iter_0000100" / "shard.pt").write_text("a")
    for p in (ckpt / "iter_0000100" / "shard.pt", ckpt / "iter_0000100", ckpt):
        os.utime(p, (1_000_000, 1_000_000))
    before = models.ModelRef(str(ckpt), "path", str(ckpt)).identity
    assert before == f"{ckpt}@1000000:1"
    (ckpt / "iter_0000100" / "shard.pt").write_text("b")  # deep inside: the folders' mtimes do not change
    os.utime(ckpt / "iter_0000100", (1_000_000, 1_000_000))
    os.utime(ckpt, (1_000_000, 1_000_000))
    assert models.ModelRef(str(ckpt), "path", str(ckpt)).identity != before


def test_the_identity_measured_by_shell_where_the_checkpoint_is_equals_the_local_one(tmp_path):
    """Over SSH the tree is measured on the cluster with `find`: the same (mtime, size) as measured here."""
    import subprocess

    ckpt = tmp_path / "ckpt"
    (ckpt / "iter_2" / "deep").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "iter_2" / "deep" / "shard.pt").write_bytes(b"x" * 1000)
    listing = subprocess.run(["bash", "-c", models.tree_stat_command(str(ckpt))], capture_output=True, text=True,
                             check=True).stdout
    assert models.parse_tree_stat(listing) == models.tree_stat(str(ckpt)) == (models.tree_stat(str(ckpt))[0], 1002)
    measured = models.ModelRef(str(ckpt), "path", str(ckpt), tree=models.parse_tree_stat(listing))
    assert measured.identity == models.ModelRef(str(ckpt), "path", str(ckpt)).identity


@pytest.mark.parametrize("override", ["run.model=/ckpt/a b", "run.model=/ckpt/$(id)",
                                      "deployment.checkpoint_path=/a,b"])
def test_a_checkpoint_path_with_shell_characters_is_refused(override):
    """The harness gets the path as its tokenizer inside a shell line: a space or `$(...)` would break or run."""
    with pytest.raises(ConfigError, match="holds characters a served path may not"):
        models.parse(load_config("local", [override]))


def test_a_hub_model_is_served_as_the_commit_it_records_and_an_unpinnable_one_is_refused(tmp_path, monkeypatch):
    """Issue 26: the commit the cache resolves the revision to is recorded and given to the engine; offline with
    no cache entry, or a hub that does not answer, the run is refused (the node would load its own `main`)."""
    commit = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"
    refs = tmp_path / "hub" / "models--Org--M" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit)
    pinned = models.resolve(ref("run.model=hf:Org/M"), lambda m: None, offline=True, hf_home=str(tmp_path))
    assert (pinned.digest, pinned.serve_revision, pinned.identity) == (commit, commit, f"hf:Org/M@{commit}")
    with pytest.raises(ConfigError, match=r"run.model=hf:Org/M@v2: the hub is offline and .* holds no v2 of Org/M"):
        models.resolve(ref("run.model=hf:Org/M@v2"), lambda m: None, offline=True, hf_home=str(tmp_path))
    given = models.resolve(ref(f"run.model=hf:Other/M@{commit}"), lambda m: None, offline=True, hf_home=str(tmp_path))
    assert given.serve_revision == commit  # a commit given is itself
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that does not answer
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="the Hugging Face hub did not say which commit main is"):
        models.resolve(ref("run.model=hf:Other/M"), lambda m: None, offline=False, hf_home=str(tmp_path))
