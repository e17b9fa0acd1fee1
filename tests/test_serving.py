import subprocess
import threading
import time

import pytest

from nemotron import serving
from nemotron.config import load_config
from nemotron.errors import ServeError


def test_gpu_command_from_default_config():
    spec = serving.server_spec(load_config("default").deployment, "/ckpt/rl")
    assert spec.command == ("vllm serve --model /ckpt/rl --served-model-name nano3 --host 0.0.0.0 --port 8000 "
                            "--tensor-parallel-size 4 --data-parallel-size 1 --max-model-len 32768")
    assert spec.connect_host == "127.0.0.1"


def test_cpu_command_from_local_config_uses_the_serving_venv():
    dep = load_config("local").deployment
    spec = serving.server_spec(dep, "/m", port=1234)
    assert spec.command.startswith("python -m vllm.entrypoints.openai.api_server --model /m")
    assert "--port 1234" in spec.command and "--dtype float32" in spec.command
    assert spec.env["VIRTUAL_ENV"].endswith("serve-venv") and spec.env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_job_script_records_the_server_pid_and_watches_its_owner(tmp_path):
    spec = serving.server_spec(load_config("local").deployment, "/m", port=1)
    script = serving.job_script(spec, tmp_path / "server.log", tmp_path / "server.pid", owner_pid=4242)
    lines = script.splitlines()
    assert 'export PATH="$VIRTUAL_ENV/bin:$PATH"' in lines
    assert lines[lines.index("server=$!") - 1].startswith("python -m vllm.entrypoints.openai.api_server --model /m")
    assert f"echo $server > {tmp_path / 'server.pid'}" in lines
    assert any("kill -0 4242" in line for line in lines)


def test_job_script_stops_the_server_when_its_owner_dies(tmp_path):
    """Run the real script: a stand-in server, an owner that exits; the server must go too."""
    owner = subprocess.Popen(["sleep", "3"])
    threading.Thread(target=owner.wait, daemon=True).start()  # reap it, as a shell reaps a killed CLI
    spec = serving.ServerSpec("sleep 300", {}, "127.0.0.1", 1, "m", 10)
    script = serving.job_script(spec, tmp_path / "server.log", tmp_path / "server.pid", owner_pid=owner.pid)
    job = subprocess.Popen(["bash", "-c", script])
    try:
        job.wait(timeout=20)
        server_pid = int((tmp_path / "server.pid").read_text())
        time.sleep(0.5)
        assert not serving._pid_alive(server_pid)
    finally:
        job.kill()
        owner.kill()


def _handle(tmp_path, pid=None):
    if pid is not None:
        (tmp_path / "server.pid").write_text(str(pid))
    return serving.ServerHandle(serving.Endpoint(f"http://127.0.0.1:{serving.free_port()}", "m"),
                                tmp_path / "server.log", "job-1", tmp_path / "server.pid")


def test_server_that_dies_fails_fast_with_its_log_tail(tmp_path):
    (tmp_path / "server.log").write_text("loading\nRuntimeError: CUDA out of memory\n")
    proc = subprocess.Popen(["true"])
    proc.wait()
    spec = serving.ServerSpec("vllm serve x", {}, "127.0.0.1", 1, "m", startup_timeout=60)
    start = time.monotonic()
    with pytest.raises(ServeError) as e:
        serving.wait_healthy(_handle(tmp_path, proc.pid), spec, print)
    assert time.monotonic() - start < 10
    assert "exited before it became healthy" in str(e.value) and "CUDA out of memory" in str(e.value)
    assert "vllm serve x" in str(e.value)


def test_server_never_healthy_times_out_with_log_tail(tmp_path):
    (tmp_path / "server.log").write_text("still loading weights\n")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        spec = serving.ServerSpec("vllm serve y", {}, "127.0.0.1", 1, "m", startup_timeout=3)
        start = time.monotonic()
        with pytest.raises(ServeError, match=r"(?s)not healthy after 3 s.*still loading weights"):
            serving.wait_healthy(_handle(tmp_path, sleeper.pid), spec, print)
        assert time.monotonic() - start < 8
    finally:
        sleeper.kill()
