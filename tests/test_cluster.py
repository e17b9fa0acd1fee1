import contextlib
import gc
import logging
import os
import time

import pytest

from nemotron.config.profiles import Profile
from nemotron.config.schema import load_config
from nemotron.serving import cluster


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
    assert f"rm -f {path} &&" not in cached and f"rm -f {path} &&" in cluster.squash_command(p, "x/y", path, True)


def test_an_interrupted_squash_leaves_no_image_and_the_next_one_imports_it(tmp_path, monkeypatch):
    """Issue 28: `enroot import` wrote the `.sqsh` in place, so an import that died midway left a file the next
    run took for the image. It now writes a partial file, renamed once complete, under a lock. Run with
    stand-ins for salloc, srun and enroot (the real ones need a cluster with enroot)."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "salloc": 'while [ "${1#--}" != "$1" ]; do shift; done; exec "$@"',  # drop its options
        "srun": 'shift; exec "$@"',  # --export=ALL
        # writes half an image, then fails if told to (an import killed midway)
        "enroot": 'echo half > "$3"; [ -e "$FAIL" ] && exit 1; echo whole > "$3"'}.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAIL": str(tmp_path / "fail")}
    p = Profile(name="c", remote_job_dir=str(tmp_path / "cluster"))
    path = cluster.squash_path(p, "nvcr.io/nvidia/vllm:25.11")
    command = cluster.squash_command(p, "nvcr.io/nvidia/vllm:25.11", path, force=False)
    (tmp_path / "fail").touch()
    assert subprocess.run(["bash", "-c", command], env=env).returncode != 0
    assert not os.path.exists(path)  # no image for the next run to take
    (tmp_path / "fail").unlink()
    assert subprocess.run(["bash", "-c", command], env=env).returncode == 0
    assert open(path).read() == "whole\n"  # the partial file became the image
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path), os.path.basename(path) + ".lock"]


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


LOGIN = ("127.0.0.1:2222", "root", "/etc/slurm/login/id_ed25519")


@pytest.mark.cluster  # through the project's sshd login node
def test_port_forward_survives_connections_refused_while_the_server_starts():
    """Through the project's sshd login node (scripts/slurm/slurm.sh): refused connects before the
    server listens must not break the forward (fabric's forward_local dies on the first one)."""
    import http.server
    import threading

    import httpx

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on `port` yet
    forward = cluster.PortForward(*LOGIN, "127.0.0.1", port)
    try:
        for _ in range(3):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{forward.local_port}/", timeout=5)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        assert httpx.get(f"http://127.0.0.1:{forward.local_port}/", timeout=5).status_code == 200
    finally:
        forward.close()
        server.shutdown()


@pytest.mark.cluster  # through the project's sshd login node
def test_port_forward_carries_1100_connections_at_once():
    """Issue 28: a production budget over SSH holds more connections open through the forward than select() can
    watch (descriptors past 1023). 1,100 connections are opened through it, each sends a line, and only then does
    any get its answer: all are open together, and all are answered."""
    import asyncio
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))  # ssh inherits it, as from the flow
    opened = 1100

    async def main() -> list[bytes]:
        arrived = asyncio.Event()
        waiting = 0

        async def echo(reader, writer):
            nonlocal waiting
            line = await reader.readline()
            waiting += 1
            if waiting == opened:
                arrived.set()
            await arrived.wait()  # nobody is answered before all are connected
            writer.write(line)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=opened)
        forward = await asyncio.to_thread(cluster.PortForward, *LOGIN, "127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            async def one(n: int) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)
                writer.write(b"%d\n" % n)
                await writer.drain()
                answer = await reader.readline()
                writer.close()
                return answer

            return await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(opened))), 120)
        finally:
            forward.close()
            server.close()

    try:
        answers = asyncio.run(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert answers == [b"%d\n" % n for n in range(opened)]


@pytest.mark.cluster  # through the project's sshd login node
def test_port_forward_restarts_ssh_when_its_connection_drops():
    """The SSH connection drops (its ssh killed): a new ssh carries later connections on the same local port, the
    server untouched. Closed, the forward's port stops answering."""
    import http.server
    import signal
    import threading

    import httpx

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    forward = cluster.PortForward(*LOGIN, "127.0.0.1", server.server_address[1])
    url = f"http://127.0.0.1:{forward.local_port}/"
    try:
        first = forward._proc.pid
        assert httpx.get(url, timeout=5).status_code == 200
        os.killpg(first, signal.SIGKILL)
        assert _answers(url, within=30), "the forward never came back"
        assert forward._proc.pid != first
    finally:
        forward.close()
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=5)
        server.shutdown()


@pytest.mark.cluster  # through the project's sshd login node
def test_port_forward_does_not_outlive_a_flow_killed_with_sigkill():
    """Its ssh runs under the reaper: when the process that opened the forward dies without cleanup, the ssh goes
    too, and the local port stops answering (a leftover ssh would hold the login session for ever)."""
    import http.server
    import subprocess
    import sys
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opener = subprocess.Popen([sys.executable, "-c", "import time; from nemotron.serving import cluster; "
                               f"f = cluster.PortForward(*{LOGIN!r}, '127.0.0.1', {server.server_address[1]}); "
                               "print(f.local_port, flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(opener.stdout.readline())}/"
        assert _answers(url, within=5)
        opener.kill()
        opener.wait()
        deadline = time.monotonic() + 10
        while _answers(url, within=0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _answers(url, within=0), "the forward outlived the process that opened it"
    finally:
        opener.kill()
        server.shutdown()


def _answers(url: str, within: float) -> bool:
    import httpx

    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def test_a_collected_experiment_leaves_the_callers_console_handler(tmp_path):
    """NeMo-Run's Experiment.__del__ removes the root logger's first handler: once the garbage collector took a
    finished server's Experiment, Prefect's console printed nothing more (test_e2e's W&B line, 1 run in 3)."""
    root, console = logging.getLogger(), logging.StreamHandler()
    root.handlers.insert(0, console)  # first, as Prefect's console handler is in a flow process
    try:
        run = cluster.nemo_run(str(tmp_path))
        with cluster.logging_kept():
            exp = run.Experiment("probe", executor=run.LocalExecutor(), log_level="WARN", clean_mode=True,
                                 enable_goodbye_message=False, skip_status_at_exit=True)
        assert console in root.handlers
        del exp
        gc.collect()
        assert console in root.handlers
    finally:
        root.removeHandler(console)
