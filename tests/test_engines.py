"""deployment.type: what each engine runs, the keys each needs, and what the dry run shows (no engine runs here;
the real servers are in tests/test_engines_served.py)."""

from __future__ import annotations

import os

import pytest

from nemotron.config import secrets
from nemotron.config.profiles import Profile
from nemotron.config.schema import load_config
from nemotron.errors import ConfigError
from nemotron.serving import endpoints, engines, jobs
from tests.helpers import REPO, nemotron


def dep(*overrides: str):
    return load_config("default", ["deployment.checkpoint_path=/ckpt/m", *overrides]).deployment


def test_each_engine_writes_its_own_command_line():
    assert engines.command(dep(), "/ckpt/m").startswith(
        "vllm serve --model /ckpt/m --served-model-name nano3 --host 0.0.0.0 --tensor-parallel-size 4 "
        "--data-parallel-size 1 --port \"$PORT\"")
    assert engines.command(dep("deployment.type=sglang", "deployment.extra_args=''"), "/ckpt/m") == (
        "python -m sglang.launch_server --model-path /ckpt/m --served-model-name nano3 --host 0.0.0.0 --tp-size 4 "
        "--dp-size 1 --port \"$PORT\"")
    template = ("myserver --weights {checkpoint} --listen {host}:{port} --name {served_model_name} "
                "--tp {tensor_parallel_size}")
    generic = dep("deployment.type=generic", f"deployment.command={template}", "deployment.extra_args=--fast")
    assert engines.command(generic, "/ckpt/with space") == (
        "myserver --weights '/ckpt/with space' --listen 0.0.0.0:\"$PORT\" --name nano3 --tp 4 --fast")
    assert engines.health_path(generic) == "/health" and engines.health_path(dep("deployment.health_path=/v1/h")) == \
        "/v1/h"


@pytest.mark.parametrize("overrides, says", [
    (["deployment.type=generic"], "deployment.type=generic needs deployment.command"),
    (["deployment.type=generic", "deployment.command=srv {checkpoint} {prot}"], "unknown placeholder {prot}"),
    (["deployment.type=generic", "deployment.command=srv {checkpoint}"], "must take the port the job picks"),
    (["deployment.type=none"], "deployment.type=none evaluates a server that already runs: set deployment.url"),
    (["deployment.type=none", "deployment.url=ftp://h/x"], "is not a server's base URL"),
    (["deployment.url=http://h:8000"], "deployment.url is for deployment.type=none"),
    (["deployment.type=none", "deployment.url=http://h:8000", "deployment.api_key_env=not a name"],
     "is not a variable name"),
    (["deployment.type=tgi"], "deployment.type"),
    (["deployment.type=none", "deployment.url=http://h:8000", "deployment.replicas=2"],
     "deployment.replicas=2 launches servers; deployment.type=none evaluates the one that runs at deployment.url"),
])
def test_each_engine_refuses_what_it_cannot_use_in_one_line(overrides, says):
    with pytest.raises(ConfigError, match=says.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")) as e:
        dep(*overrides)
    assert "\n" not in str(e.value)


def test_a_running_endpoints_url_may_end_in_v1_and_its_identity_says_where_it_is():
    running = dep("deployment.type=none", "deployment.url=http://h:8000/v1/")
    assert engines.external_url(running.url) == "http://h:8000"
    assert jobs.serving_record(running) == {"engine": "none", "endpoint": "http://h:8000 as nano3"}
    elsewhere = dep("deployment.type=none", "deployment.url=http://other:8000")
    assert key(running) != key(elsewhere)
    assert not engines.launches(running) and engines.health_path(running) == "/v1/models"


def key(d, image=None, model="/ckpt/m@1:2"):
    return engines.identity(model, jobs.serving_record(d, image))


def test_the_served_model_is_another_model_when_anything_that_changes_numerics_changes():
    """Issue 26: the result key (and eval compare) know the engine, its version and its numerics flags; transport
    and capacity settings do not make another model."""
    base = dep("deployment.venv=managed", "deployment.extra_args=--dtype float32 --max-num-seqs 8")
    record = jobs.serving_record(base)
    assert record["engine"] == "vllm" and record["vllm"] == "0.32.0" and record["dtype"] == "float32"
    assert "max-num-seqs" not in record and "port" not in record
    others = [
        dep("deployment.venv=managed", "deployment.extra_args=--dtype bfloat16 --max-num-seqs 8"),
        dep("deployment.venv=managed", "deployment.extra_args=--dtype=float32 --quantization fp8"),
        dep("deployment.venv=managed", "deployment.extra_args=--dtype float32 --kv-cache-dtype fp8"),
        dep("deployment.venv=managed", "deployment.extra_args=--dtype float32 --max-model-len 2048"),
        dep("deployment.venv=managed", "deployment.extra_args=--dtype float32 --enforce-eager"),
        dep("deployment.venv=managed", "deployment.extra_args=--dtype float32", "deployment.tensor_parallel_size=2"),
        dep("deployment.venv=managed", "deployment.extra_args=--dtype float32", "deployment.env.VLLM_X=fast"),
        dep("deployment.type=sglang", "deployment.extra_args=--dtype float32"),
        dep("deployment.extra_args=--dtype float32"),  # vllm from the node's PATH, not the managed 0.32.0
    ]
    keys = {key(base)} | {key(d) for d in others}
    assert len(keys) == len(others) + 1  # each is another model
    assert key(base, image="nvcr.io/nvidia/vllm:25.01") != key(base, image="nvcr.io/nvidia/vllm:25.02")
    same = [dep("deployment.venv=managed", "deployment.extra_args=--dtype float32 --max-num-seqs 256"),
            dep("deployment.venv=managed", "deployment.extra_args=--dtype float32", "deployment.data_parallel_size=2",
                "deployment.replicas=3", "deployment.port=9000", "deployment.startup_timeout=60")]
    assert {key(d) for d in same} == {key(dep("deployment.venv=managed", "deployment.extra_args=--dtype float32"))}


def test_another_venvs_engine_version_is_read_from_its_installed_package(tmp_path):
    (tmp_path / "lib/python3.12/site-packages/vllm-0.33.1.dist-info").mkdir(parents=True)
    assert jobs.serving_record(dep(f"deployment.venv={tmp_path}"))["vllm"] == "0.33.1"
    assert "unknown" in jobs.serving_record(dep(f"deployment.venv={tmp_path}/none"))["vllm"]


def test_an_engine_nobody_can_name_before_launching_is_unpinned_and_a_pinned_one_is_not(tmp_path):
    """Issue 26: a record that cannot say which engine serves (the node's PATH, a venv without the package, an
    image by a moving tag) is unpinned: the flow gives such a run a key of its own, so it is never reused."""
    unpinned = [dep("deployment.venv=null"), dep(f"deployment.venv={tmp_path}/none"),
                dep("deployment.venv=null", "deployment.command=python -m vllm.entrypoints.openai.api_server")]
    assert all(jobs.unpinned(jobs.serving_record(d)) for d in unpinned)
    assert "the server node's PATH" in jobs.unpinned(jobs.serving_record(dep("deployment.venv=null")))
    for image in ("nvcr.io/nvidia/vllm", "nvcr.io/nvidia/vllm:latest", "localhost:5000/vllm"):
        moves = f"the image {image} is named by a tag that moves"
        assert jobs.unpinned(jobs.serving_record(dep(), image)) == moves
    for image in ("nvcr.io/nvidia/vllm:25.01", "nvcr.io/nvidia/vllm@sha256:" + "ab" * 32, "/lustre/img/vllm.sqsh"):
        assert jobs.unpinned(jobs.serving_record(dep(), image)) is None, image
    pinned = [dep("deployment.venv=managed"), dep("deployment.venv=managed", "deployment.command=/opt/serve.sh"),
              dep("deployment.type=generic", "deployment.command=/opt/serve.sh --port {port}")]
    assert [jobs.unpinned(jobs.serving_record(d)) for d in pinned] == [None, None, None]


def test_a_venv_on_the_clusters_disk_is_read_through_the_login_node(monkeypatch):
    seen = []
    monkeypatch.setattr(jobs.cluster, "remote_package_version",
                        lambda profile, venv, package: seen.append((venv, package)) or "0.34.0")
    profile = Profile(name="c", executor="slurm", tunnel="ssh", host="login", user="u", account="a", partition="p",
                      remote_job_dir="/scratch/u/jobs")
    assert jobs.engine_version(dep("deployment.venv=~/envs/vllm"), None, profile) == "0.34.0"
    assert seen == [("~/envs/vllm", "vllm")]
    monkeypatch.setattr(jobs.cluster, "remote_package_version", lambda *a: None)  # unreachable, or no package
    assert jobs.engine_version(dep("deployment.venv=/envs/vllm"), None, profile).startswith("unknown (no vllm")


@pytest.mark.cluster  # the login node reads the file
@pytest.mark.parametrize("name", ["local-slurm", "local-slurm-ssh"])
def test_the_image_file_on_the_clusters_disk_is_in_the_key_and_one_nobody_has_seen_is_unpinned(tmp_path, name):
    """Issue 26: the squashed file is what serves, whatever its tag names now. Its size and time, read where the
    cluster's files are (here, or through the real sshd login node), are in the key: a re-imported file scores
    anew. An image file not there yet, or re-imported by this run (--force-squash), is unpinned."""
    from nemotron.config.profiles import load_profile
    profile = load_profile(name, REPO / "config" / "env.example.toml").model_copy(
        update={"remote_job_dir": str(tmp_path)})
    tag = "nvcr.io/nvidia/vllm:latest"
    first = jobs.serving_record(dep(), tag, profile)
    assert first["image.file"].endswith(f"({jobs.NOT_THERE})")
    assert jobs.unpinned(first).startswith("the image file is ")
    sqsh = tmp_path / "containers" / "nvcr_io_nvidia_vllm_latest.sqsh"
    sqsh.parent.mkdir()
    sqsh.write_bytes(b"x" * 10)
    os.utime(sqsh, (1_700_000_000, 1_700_000_000))
    squashed = jobs.serving_record(dep(), tag, profile)
    assert squashed["image.file"] == f"{sqsh} (10 bytes, modified 1700000000)"
    assert jobs.unpinned(squashed) is None  # `latest`, but the file it was squashed to is named
    assert jobs.unpinned(squashed, force_squash=True) == f"--force-squash imports {tag} anew into {sqsh}"
    sqsh.write_bytes(b"y" * 11)  # re-imported
    assert key(dep(), tag) == key(dep(), tag) and \
        engines.identity("m", jobs.serving_record(dep(), tag, profile)) != engines.identity("m", squashed)
    given = jobs.serving_record(dep(), str(sqsh), profile)  # a .sqsh the user gives is looked at the same way
    assert given["image.file"].startswith(f"{sqsh} (11 bytes, modified ") and jobs.unpinned(given) is None


def test_a_secret_in_the_servers_environment_never_reaches_the_serving_record():
    secrets.remember("s3cr3t-value-1234")
    record = jobs.serving_record(dep("deployment.env.HF_TOKEN=s3cr3t-value-1234", "deployment.env.MODE=a"))
    assert "s3cr3t-value-1234" not in str(record) and record["env.MODE"] == "a"
    # a secret given or not is the same model (the e2e test's rerun leaves its password out)
    assert "env.HF_TOKEN" not in record and record == jobs.serving_record(dep("deployment.env.MODE=a"))
    assert "env.VLLM_CPU_KVCACHE_SPACE" not in jobs.serving_record(dep("deployment.env.VLLM_CPU_KVCACHE_SPACE='8'"))
    in_process = dep("deployment.env.VLLM_ENABLE_V1_MULTIPROCESSING='0'")  # the embedded default's
    assert "env.VLLM_ENABLE_V1_MULTIPROCESSING" not in jobs.serving_record(in_process)


def test_a_running_endpoints_url_with_a_user_or_password_is_refused_without_showing_them():
    """Issue 27: `http://user:pass@host` was logged and written to the manifest."""
    with pytest.raises(ConfigError) as e:
        dep("deployment.type=none", "deployment.url=http://alice:pw-url-4242@h:8000/v1")
    assert str(e.value).startswith("deployment.url='http://***@h:8000/v1' carries a user name or password")
    assert "pw-url-4242" not in str(e.value) and "api_key_env" in str(e.value)
    assert secrets.mask("later pw-url-4242") == "later ***"


def test_the_key_of_a_running_endpoint_is_read_from_its_variable_and_sent_as_a_bearer_token(monkeypatch):
    running = dep("deployment.type=none", "deployment.url=http://h:8000", "deployment.api_key_env=ENDPOINT_KEY")
    with pytest.raises(ConfigError, match="deployment.api_key_env=ENDPOINT_KEY names a variable that is not set"):
        engines.api_key(running)
    monkeypatch.setenv("ENDPOINT_KEY", "k-0123456789")
    assert engines.api_key(running) == "k-0123456789"
    endpoint = endpoints.Endpoint("http://h:8000", "m", "/v1/models", "ENDPOINT_KEY")
    assert endpoint.headers() == {"Authorization": "Bearer k-0123456789"}
    assert "k-0123456789" not in repr(endpoint)  # the variable's name travels, not its value


def test_dry_runs_show_what_sglang_and_the_megatron_config_launch():
    env = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")}
    r = nemotron("nano3", "eval", "--dry-run", "-t", "gsm8k", "deployment.type=sglang", "deployment.extra_args=''",
                 "deployment.checkpoint_path=/lustre/ckpt/rl", "--run", "YOUR-CLUSTER", env=env)
    assert r.returncode == 0, r.stderr
    assert "engine: sglang" in r.stdout
    assert "python -m sglang.launch_server --model-path /lustre/ckpt/rl --served-model-name nano3" in r.stdout
    assert "#SBATCH --gpus-per-node=8" in r.stdout  # NeMo-Run's sbatch script for it

    r = nemotron("nano3", "eval", "-c", "megatron", "--dry-run", "-t", "hellaswag", "--run", "YOUR-CLUSTER",
                 "deployment.checkpoint_path=/lustre/ckpt/sft", env=env)
    assert r.returncode == 0, r.stderr
    assert ("python /opt/Export-Deploy/scripts/deploy/nlp/deploy_ray_inframework.py --megatron_checkpoint "
            "/lustre/ckpt/sft --model_id megatron_model --host 0.0.0.0 --port \"$PORT\"") in r.stdout
    assert "health: /v1/health" in r.stdout and "tokenizer: /lustre/ckpt/sft/tokenizer" in r.stdout
    sqsh = "/lustre/fsw/users/myuser/.nemotron/containers/nvcr_io_nvidia_nemo_25_11_nemotron_3_nano.sqsh"
    assert f"--container-image {sqsh}" in r.stdout


def test_a_running_endpoint_is_shown_not_launched_and_a_missing_key_variable_is_refused_at_plan_time():
    running = ["deployment.type=none", "deployment.url=http://10.0.0.5:8000/v1", "deployment.api_key_env=ENDPOINT_KEY"]
    r = nemotron("nano3", "eval", "--dry-run", "-t", "gsm8k", "deployment.checkpoint_path=/ckpt", *running,
                 env={"ENDPOINT_KEY": "k-abcdefgh12"})
    assert r.returncode == 0, r.stderr
    assert "where: 'the running endpoint http://10.0.0.5:8000: nothing is launched or stopped'" in r.stdout
    assert "api_key: $ENDPOINT_KEY as a bearer token" in r.stdout and "k-abcdefgh12" not in r.stdout
    assert "#SBATCH" not in r.stdout
    r = nemotron("nano3", "eval", "-t", "gsm8k", "deployment.checkpoint_path=/ckpt", "deployment.type=none",
                 "deployment.url=http://10.0.0.5:8000", "deployment.api_key_env=ENDPOINT_KYE")
    assert r.returncode == 2 and r.stderr.startswith("error: deployment.api_key_env=ENDPOINT_KYE names a variable")
