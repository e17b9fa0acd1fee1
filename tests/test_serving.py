import subprocess
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


def test_job_script_records_pid_then_execs(tmp_path):
    spec = serving.server_spec(load_config("local").deployment, "/m", port=1)
    script = serving.job_script(spec, tmp_path / "server.log", tmp_path / "server.pid")
    lines = script.splitlines()
    assert 'export PATH="$VIRTUAL_ENV/bin:$PATH"' in lines
    assert lines[-2] == f"echo $$ > {tmp_path / 'server.pid'}"
    assert lines[-1].startswith("exec python -m vllm") and lines[-1].endswith(f">> {tmp_path / 'server.log'} 2>&1")


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
