import pytest

from nemotron.config import profiles
from nemotron.errors import ConfigError
from tests.helpers import REPO

EXAMPLE = REPO / "config" / "env.example.toml"


def test_spec_profile_loads():
    p = profiles.load_profile("YOUR-CLUSTER", EXAMPLE)
    assert (p.executor, p.account, p.partition, p.tunnel, p.host, p.user) == \
        ("slurm", "YOUR-ACCOUNT", "batch", "ssh", "cluster.example.com", "myuser")
    assert p.remote_job_dir == "/lustre/fsw/users/myuser/.nemotron" and p.gpus_per_node == 8


def test_extends_inherits_and_overrides():
    p = profiles.load_profile("YOUR-CLUSTER-short", EXAMPLE)
    assert p.time == "01:00:00" and p.host == "cluster.example.com" and p.mounts == ["/lustre:/lustre"]


def test_unknown_profile_lists_the_ones_that_exist():
    with pytest.raises(ConfigError, match="valid profiles: YOUR-CLUSTER, YOUR-CLUSTER-short, local-slurm"):
        profiles.load_profile("nope", EXAMPLE)


def test_wandb_section():
    w = profiles.wandb_settings(EXAMPLE)
    assert (w.entity, w.project) == ("YOUR-TEAM", "nemotron")


def test_found_by_walking_up(tmp_path, monkeypatch):
    (tmp_path / "env.toml").write_text('[c]\nexecutor = "local"\n')
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.delenv(profiles.ENV_FILE_VAR, raising=False)
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert profiles.load_profile("c").executor == "local"


def test_env_var_wins(tmp_path, monkeypatch):
    f = tmp_path / "mine.toml"
    f.write_text('[x]\nexecutor = "local"\n')
    monkeypatch.setenv(profiles.ENV_FILE_VAR, str(f))
    assert profiles.env_file() == f


def test_cycle_and_bad_keys_are_config_errors(tmp_path):
    f = tmp_path / "env.toml"
    f.write_text('[a]\nextends = "b"\n[b]\nextends = "a"\n[c]\nexecutor = "slurm"\npartiton = "x"\n'
                 '[d]\nexecutor = "pbs"\n[e]\ntunnel = "ssh"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        profiles.load_profile("a", f)
    with pytest.raises(ConfigError, match="unknown key 'partiton'"):
        profiles.load_profile("c", f)
    with pytest.raises(ConfigError, match="invalid executor"):
        profiles.load_profile("d", f)
    with pytest.raises(ConfigError, match="no host/user"):
        profiles.load_profile("e", f)


def test_training_stage_keys_are_accepted_and_container_is_an_alias(tmp_path):
    f = tmp_path / "env.toml"
    f.write_text('[c]\nexecutor = "slurm"\ncontainer = "nvcr.io/x:1"\nrun_partition = "interactive"\n'
                 'batch_partition = "batch"\npartition = "p"\ncpus_per_task = 16\nmem = "0"\nexclusive = true\n'
                 'startup_commands = ["module load cuda"]\nbuild_partition = "cpu"\n')
    p = profiles.load_profile("c", f)
    assert p.container_image == "nvcr.io/x:1" and p.cpus_per_task == 16
    assert (p.partition_for(detached=False), p.partition_for(detached=True)) == ("interactive", "batch")


def test_typo_in_a_profile_key_suggests_the_right_one(tmp_path):
    f = tmp_path / "env.toml"
    f.write_text('[c]\nexecutor = "slurm"\ngpus_per_nod = 8\n')
    with pytest.raises(ConfigError, match=r"unknown key 'gpus_per_nod'.*did you mean 'gpus_per_node'"):
        profiles.load_profile("c", f)


def test_unknown_profile_without_an_env_toml_reads_as_a_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("NEMOTRON_ENV_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        profiles.load_profile("local")
    assert str(e.value) == "unknown profile 'local': no env.toml found (set NEMOTRON_ENV_FILE or create one)"
