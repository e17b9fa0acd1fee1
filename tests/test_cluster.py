from nemotron import cluster
from nemotron.config import load_config
from nemotron.profiles import Profile


def test_enroot_uri_separates_the_registry():
    assert cluster.enroot_uri("nvcr.io/nvidia/vllm:25.11") == "docker://nvcr.io#nvidia/vllm:25.11"
    assert cluster.enroot_uri("vllm/vllm-openai:latest") == "docker://vllm/vllm-openai:latest"
    assert cluster.enroot_uri("localhost:5000/vllm") == "docker://localhost:5000#vllm"
    assert cluster.enroot_uri("nvcr.io#nvidia/vllm") == "docker://nvcr.io#nvidia/vllm"
    assert cluster.enroot_uri("dockerd://vllm:1") == "dockerd://vllm:1"


def test_squash_is_cached_by_image_name_and_built_on_a_compute_node():
    p = Profile(name="c", account="a", partition="batch", build_partition="cpu", build_time="00:30:00",
                remote_job_dir="/lustre/u/.nemotron")
    path = cluster.squash_path(p, "nvcr.io/nvidia/vllm:25.11")
    assert path == "/lustre/u/.nemotron/containers/nvcr_io_nvidia_vllm_25_11.sqsh"
    cached = cluster.squash_command(p, "nvcr.io/nvidia/vllm:25.11", path, force=False)
    assert f"test -f {path} || salloc --account=a --partition=cpu --nodes=1 --ntasks-per-node=1 " \
           "--time=00:30:00 srun --export=ALL bash -c" in cached
    assert "rm -f" not in cached and "rm -f " + path in cluster.squash_command(p, "x/y", path, force=True)


def test_image_comes_from_config_else_profile_and_only_on_slurm():
    dep = load_config("default").deployment
    slurm = Profile(name="s", container="img:profile")
    assert cluster.image_for(dep, slurm) == "img:profile"
    assert cluster.image_for(dep.model_copy(update={"image": "img:config"}), slurm) == "img:config"
    assert cluster.image_for(dep, Profile(name="l", executor="local", container="img")) is None


def test_nemorun_home_on_a_shared_filesystem_for_local_tunnels(monkeypatch):
    monkeypatch.delenv("NEMOTRON_NEMORUN_HOME", raising=False)
    assert cluster.nemorun_home(Profile(name="s", remote_job_dir="/lustre/u/nr")) == "/lustre/u/nr"
    assert cluster.nemorun_home(None).endswith("/nemorun")
