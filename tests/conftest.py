"""One real Prefect server for the whole test session (as a user's team would run one).

It starts before collection, because Prefect reads PREFECT_API_URL when it is imported; every
flow run of the tests — in-process or through the CLI in a subprocess — reports to it. Its
database lives in a temporary PREFECT_HOME, so the tests never touch the user's.
Set PREFECT_API_URL yourself to run the tests against another server.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")

_server: subprocess.Popen | None = None
_home: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config):
    global _server, _home
    if os.environ.get("PREFECT_API_URL"):
        return
    _home = tempfile.mkdtemp(prefix="prefect-tests-")
    port = _free_port()
    log = open(os.path.join(_home, "server.log"), "w")  # noqa: SIM115 - lives as long as the server
    _server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
         "--analytics-off"],
        env={**os.environ, "PREFECT_HOME": _home, "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if _server.poll() is not None:
            break
        time.sleep(0.5)
    else:
        _server.poll()
    if _server.returncode is not None or time.monotonic() >= deadline:
        raise RuntimeError(f"the test Prefect server did not start; see {_home}/server.log")
    os.environ["PREFECT_API_URL"] = url
    os.environ["PREFECT_HOME"] = _home


def pytest_unconfigure(config):
    if _server is not None and _server.poll() is None:
        os.killpg(_server.pid, 15)
        try:
            _server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(_server.pid, 9)
    if _home is not None:
        shutil.rmtree(_home, ignore_errors=True)


def _queued_jobs() -> dict[str, str]:
    """This project's jobs in the Slurm queue by id ({} where no Slurm runs: the unit tests need none)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {line.split()[0]: line for line in out.stdout.splitlines() if "nemotron-eval" in line} \
        if out.returncode == 0 else {}


@pytest.fixture(autouse=True)
def _no_job_left_behind():
    """A job a test leaves in the queue fails that test, and is cancelled: left there, it failed every later test
    that looks at the queue, and CI named five tests for one fault. (One test session per Slurm at a time: a second
    session's jobs would be taken for this test's. In scripts/lanes.py only the cluster lane submits jobs, and only
    it looks.)"""
    if os.environ.get("NEMOTRON_TEST_LANE", "cluster") != "cluster":
        yield
        return
    before = _queued_jobs()
    yield
    left = {i: line for i, line in _queued_jobs().items() if i not in before}
    if not left:
        return
    subprocess.run(["scancel", *left], capture_output=True)
    deadline = time.monotonic() + 60
    while set(left) & set(_queued_jobs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    pytest.fail(f"the test left jobs in the Slurm queue (now cancelled): {sorted(left.values())}", pytrace=False)


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service():
    """An in-process W&B run (the flow tests) leaves WANDB_SERVICE in os.environ; CLI subprocesses of later tests
    must start their own service, as a user's would."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


def _machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (all processes, Slurm jobs and servers included), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


_cpu_by_test: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Machine CPU per test: the suite's floor on two cores is its CPU time, not its wall time, so what to make
    lighter is read from here (in a one-session run; in lanes a test's figure includes the other lane's)."""
    start = _machine_cpu_seconds()
    yield
    _cpu_by_test[item.nodeid] = _machine_cpu_seconds() - start


def pytest_terminal_summary(terminalreporter):
    if not _cpu_by_test:
        return
    heaviest = sorted(_cpu_by_test.items(), key=lambda kv: kv[1], reverse=True)
    terminalreporter.write_sep("=", f"ten heaviest tests by machine CPU ({sum(_cpu_by_test.values()):.0f} CPU-s "
                                    f"in all tests)")
    for nodeid, seconds in heaviest[:10]:
        terminalreporter.write_line(f"{seconds:8.1f} CPU-s  {nodeid}")
    report = os.environ.get("NEMOTRON_TEST_CPU_REPORT")
    if report:
        with open(report, "w") as f:
            f.writelines(f"{seconds:.1f}\t{nodeid}\n" for nodeid, seconds in heaviest)
