"""Serve the model once for the whole suite: a vLLM server launched as a NeMo-Run job.

`serve()` is a context manager: it launches, waits until `/health` answers (checking the process
each loop), yields the endpoint, and always stops the job — on success, failure, Ctrl-C or cancel.
The vLLM command line comes from config, so the same code runs `vllm serve` on a GPU cluster and
`python -m vllm.entrypoints.openai.api_server` from the CPU venv here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from nemotron import runtime
from nemotron.config import DeploymentSection
from nemotron.errors import ServeError

HEALTH_POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class Endpoint:
    """Where the benchmarks send requests."""

    base_url: str  # http://host:port
    model_id: str

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/v1/completions"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"


@dataclass(frozen=True)
class ServerSpec:
    """Everything needed to start the server; rendered for dry runs, launched by `serve()`."""

    command: str
    env: dict[str, str]
    host: str
    port: int
    model_id: str
    startup_timeout: float

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


def venv_dir(dep: DeploymentSection) -> Path | None:
    if dep.venv is None:
        return None
    return runtime.serve_venv() if dep.venv == "managed" else Path(dep.venv).expanduser()


def server_spec(dep: DeploymentSection, model_path: str, port: int | None = None) -> ServerSpec:
    """The server command line and environment for a model path (port 0 is left for launch time)."""
    port = dep.port if port is None else port
    args = [
        "--model", model_path,
        "--served-model-name", dep.served_model_name,
        "--host", dep.host,
        "--port", str(port),
        "--tensor-parallel-size", str(dep.tensor_parallel_size),
        "--data-parallel-size", str(dep.data_parallel_size),
    ]
    command = " ".join([dep.command, *map(shlex.quote, args), dep.extra_args]).strip()
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **dep.env}
    venv = venv_dir(dep)
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
    return ServerSpec(command, env, dep.host, port, dep.served_model_name, dep.startup_timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_script(spec: ServerSpec, log_path: Path, pid_path: Path, owner_pid: int | None = None) -> str:
    """The shell the NeMo-Run job runs: start the server, record its pid, and wait on it.

    With `owner_pid` (local runs), the script also stops the server when the submitting process
    is gone, so even a SIGKILLed CLI leaves no server behind.
    """
    exports = [f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()]
    if "VIRTUAL_ENV" in spec.env:
        exports.append('export PATH="$VIRTUAL_ENV/bin:$PATH"')
    lines = [
        *exports,
        f"{spec.command} >> {shlex.quote(str(log_path))} 2>&1 &",
        "server=$!",
        f"echo $server > {shlex.quote(str(pid_path))}",
        'trap \'kill -TERM "$server" 2>/dev/null; wait "$server"; exit 143\' TERM INT',
    ]
    if owner_pid is not None:
        lines += [
            'while kill -0 "$server" 2>/dev/null; do',
            f"  if ! kill -0 {owner_pid} 2>/dev/null; then kill -TERM \"$server\"; wait \"$server\"; exit 143; fi",
            "  sleep 2 & wait $!",
            "done",
        ]
    lines.append('wait "$server"')
    return "\n".join(lines)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return f"(no log at {path})"


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return True  # not started yet: the pid file appears when the job's shell runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ServerHandle:
    """Runtime facts about a launched server (never stored in the config)."""

    endpoint: Endpoint
    log_path: Path
    job_id: str
    pid_path: Path

    def alive(self) -> bool:
        return _pid_alive(_read_pid(self.pid_path))

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.endpoint.base_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def wait_healthy(handle: ServerHandle, spec: ServerSpec, say: Callable[[str], None]) -> float:
    """Poll /health until it answers; fail fast if the process dies. Returns seconds waited."""
    start = time.monotonic()
    deadline = start + spec.startup_timeout
    while time.monotonic() < deadline:
        if handle.healthy():
            return time.monotonic() - start
        if not handle.alive():
            raise ServeError(
                f"the model server exited before it became healthy (job {handle.job_id}).\n"
                f"command: {spec.command}\nlog: {handle.log_path}, last lines:\n{log_tail(handle.log_path)}"
            )
        time.sleep(HEALTH_POLL_SECONDS)
    raise ServeError(
        f"the model server was not healthy after {spec.startup_timeout:.0f} s "
        f"(deployment.startup_timeout; job {handle.job_id}).\ncommand: {spec.command}\n"
        f"log: {handle.log_path}, last lines:\n{log_tail(handle.log_path)}"
    )


@contextlib.contextmanager
def serve(
    dep: DeploymentSection, model_path: str, run_dir: Path, say: Callable[[str], None] = print
) -> Iterator[ServerHandle]:
    """Launch the server as a NeMo-Run job (LocalExecutor), yield it once healthy, always stop it."""
    with warnings.catch_warnings():  # leptonai (via nemo_run) imports a deprecated starlette module
        warnings.simplefilter("ignore")
        import nemo_run as run  # heavy import: only when serving

    os.environ.setdefault("NEMORUN_HOME", str(runtime.home() / "nemo_run"))
    if dep.venv == "managed":
        runtime.ensure_serve_venv(say)
    spec = server_spec(dep, model_path, port=dep.port or free_port())
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path, pid_path = run_dir / "server.log", run_dir / "server.pid"
    pid_path.unlink(missing_ok=True)
    script = run.Script(inline=job_script(spec, log_path, pid_path, owner_pid=os.getpid()))
    with _root_logging_kept():
        exp = run.Experiment(f"serve-{dep.served_model_name}", executor=run.LocalExecutor(),
                             log_level="WARN", clean_mode=True, enable_goodbye_message=False,
                             skip_status_at_exit=True)
    handle = ServerHandle(Endpoint(f"http://{spec.connect_host}:{spec.port}", spec.model_id),
                          log_path, exp._id, pid_path)
    say(f"[serve] launching {spec.command}")
    say(f"[serve] NeMo-Run experiment {exp._id}; server log {log_path}")
    with _root_logging_kept(), exp:
        try:
            exp.add(script, name="server")
            exp.run(detach=True)  # local jobs cannot detach: run() returns after launch, __exit__ waits
            waited = wait_healthy(handle, spec, say)
            say(f"[serve] healthy after {waited:.0f} s at {handle.endpoint.base_url}")
            yield handle
        finally:
            _stop(exp, handle, say)


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """NeMo-Run's Experiment replaces the root logger's handlers (basicConfig force=True) on entry
    and removes one on exit; keep the caller's logging (Prefect's console and API handlers) intact."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _stop(exp, handle: ServerHandle, say: Callable[[str], None]) -> None:
    """Cancel the job (kills its process group), then make sure the server pid is gone."""
    with contextlib.suppress(Exception):
        exp.cancel("server")
    pid = _read_pid(handle.pid_path)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while pid is not None and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid is not None and _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    say(f"[serve] stopped (job {handle.job_id})")
