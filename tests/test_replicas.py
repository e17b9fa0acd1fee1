"""deployment.replicas, the lifecycle part: N servers launched at once, a dead one out of the gate and relaunched
while the others serve, the suite told only when none serves. Fake servers (processes) stand in for vLLM here to
kill them at exact moments; the same flow on real vLLM servers is in test_replicas_served.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from nemotron.errors import ServeError
from nemotron.serving import endpoints, gate, replicas
from nemotron.serving.endpoints import Endpoint, free_port
from nemotron.serving.jobs import ServerHandle
from tests.helpers import FAKE
from tests.test_gate import post


class FakeLauncher:
    """`serving.serve` for fake servers: each launch is a process; `procs` holds them by replica name."""

    def __init__(self, *args: str, fail: set[str] | None = None):
        self.args, self.fail = args, fail or set()
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.said: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str, stop: threading.Event, say, on_running):
        if name in self.fail:
            raise ServeError(f"{name} could not start")
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(FAKE), "--port", str(port), *self.args], stdout=subprocess.DEVNULL)
        self.procs.setdefault(name, []).append(proc)
        on_running()
        try:
            while not endpoints.healthy(f"http://127.0.0.1:{port}/health"):
                if stop.is_set():
                    raise ServeError(f"{name} stopped while starting")
                time.sleep(0.05)
            say(f"[serve] healthy at http://127.0.0.1:{port}")
            yield ServerHandle(Endpoint(f"http://127.0.0.1:{port}", "fake"), None)
        finally:
            proc.kill()
            proc.wait()


def test_names_keep_one_server_as_before():
    assert replicas.names(1) == ["server"]
    assert replicas.names(3) == ["server-replica-1", "server-replica-2", "server-replica-3"]


def test_a_dead_replica_is_relaunched_while_the_other_serves_and_no_request_fails():
    launch, said = FakeLauncher("--delay", "0.3"), []
    with replicas.serve(launch, 2, said.append, restarts=2, interval=0.2) as fleet:
        fleet.wait_loading()
        assert fleet.loading.is_set()
        fleet.wait_ready()
        assert set(fleet.urls()) == {"server-replica-1", "server-replica-2"}
        assert any(m.startswith("[serve server-replica-2] healthy at") for m in said), said
        with gate.open_gate(fleet.urls(), budget=4) as g:
            fleet.watch(g)
            died = fleet.died
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(post, g, f"{g.url}/gsm8k/v1/completions") for _ in range(40)]
                time.sleep(0.5)
                launch.procs["server-replica-1"][0].kill()
                codes = [f.result() for f in futures]
            deadline = time.monotonic() + 20
            while len(fleet.serving) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            after = [post(g, f"{g.url}/gsm8k/v1/completions") for _ in range(8)]
            record = g.record()
            assert not died.is_set()
    assert codes == [200] * 40 and after == [200] * 8
    assert len(launch.procs["server-replica-1"]) == 2 and len(launch.procs["server-replica-2"]) == 1
    assert fleet.relaunched == 1
    assert any("server-replica-1 died" in m and "relaunching it (1/2) while server-replica-2 serves;" in m
               for m in said), said
    assert any(m.startswith("[serve] server-replica-1 serves again") for m in said), said
    by_url = {r["url"]: r for r in record["replicas"]}
    assert len(by_url) == 3 and [r["name"] for r in record["replicas"]].count("server-replica-1") == 2
    dead = next(r for r in record["replicas"] if not r["alive"])
    assert dead["redone"] <= 4  # no more than the budget could have had in flight there
    assert sum(r["requests"] - r["redone"] for r in record["replicas"]) == 48
    again = record["replicas"][-1]
    assert again["name"] == "server-replica-1" and again["requests"] >= 1  # the relaunched one takes requests
    assert all(p.poll() is not None for ps in launch.procs.values() for p in ps)  # every server stopped after


@contextlib.contextmanager
def watched(launch: FakeLauncher, count: int, said: list[str], restarts: int, hang: float = 600.0, budget: int = 2):
    """Healthy replicas behind a gate, watched: the fleet."""
    with replicas.serve(launch, count, said.append, restarts=restarts, interval=0.2, hang=hang) as fleet:
        fleet.wait_ready()
        with gate.open_gate(fleet.urls(), budget=budget) as g:
            fleet.watch(g)
            fleet.gate = g
            yield fleet


def test_the_suite_is_told_only_when_no_replica_serves():
    launch, said = FakeLauncher(), []
    with watched(launch, 2, said, restarts=0) as fleet:
        launch.procs["server-replica-2"][0].kill()
        told = "not relaunched: deployment.max_restarts=0 reached; server-replica-1 serves on"
        deadline = time.monotonic() + 15  # 3 missed checks 0.2 s apart, on a machine that may be busy
        while not any(told in m for m in said) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(told in m for m in said), said
        assert not fleet.died.is_set() and fleet.alive()  # one serves on: max_restarts=0 only stops the relaunch
        launch.procs["server-replica-1"][0].kill()
        assert fleet.died.wait(5) and not fleet.alive()


def test_one_server_dies_as_before_replicas_the_flow_relaunches_it():
    launch, said = FakeLauncher(), []
    with watched(launch, 1, said, restarts=2) as fleet:
        assert list(fleet.urls()) == ["server"]
        launch.procs["server"][0].kill()
        assert fleet.died.wait(5)
    assert len(launch.procs["server"]) == 1 and not any("relaunching" in m for m in said)


def test_a_replica_that_cannot_start_fails_the_launch_and_stops_the_others():
    launch = FakeLauncher(fail={"server-replica-2"})
    with pytest.raises(ServeError, match="server-replica-2 could not start"):
        with replicas.serve(launch, 2, print, restarts=1, interval=0.2) as fleet:
            fleet.wait_ready()
    assert all(p.poll() is not None for p in launch.procs["server-replica-1"])


def test_a_replica_is_judged_by_what_it_does():
    """Issue 28, the watch's rule: refusing for the grace period is a death, answering nothing for hang_timeout
    while requests wait (or with a silent health check) is a hang; a slow health check while requests are answered,
    or a refusal followed by an answer, is neither."""
    def seen(**kw) -> gate.Replica:
        return gate.Replica("http://x", **kw)

    grace, hang = 15.0, 600.0
    look = replicas.Look()
    assert replicas.verdict(endpoints.REFUSED, seen(), look, 100.0, grace, hang) is None  # one refusal
    assert replicas.verdict(endpoints.REFUSED, seen(), look, 114.0, grace, hang) is None
    assert replicas.verdict(endpoints.REFUSED, seen(), look, 115.0, grace, hang) == "refused connections for 15 s"
    look = replicas.Look()
    replicas.verdict(endpoints.UNHEALTHY, seen(), look, 100.0, grace, hang)
    assert replicas.verdict(endpoints.UNHEALTHY, seen(answered_at=110.0), look, 120.0, grace, hang) is None
    assert replicas.verdict(endpoints.UNHEALTHY, seen(answered_at=110.0), look, 134.0, grace, hang) is None
    assert replicas.verdict(endpoints.UNHEALTHY, seen(answered_at=110.0), look, 135.0, grace, hang) == \
        "answered its health check with an error for 15 s"  # counted from its first error after its last answer
    # requests fail in the gate while /health answers: the gate's refusals count
    assert replicas.verdict(endpoints.OK, seen(refused_since=100.0), replicas.Look(), 114.0, grace, hang) is None
    assert replicas.verdict(endpoints.OK, seen(refused_since=100.0), replicas.Look(), 115.0, grace, hang) \
        == "gave no answer to requests for 15 s"
    # a slow /health for 20 minutes while requests are answered: serving
    look = replicas.Look()
    for t in range(0, 1200, 5):
        busy = seen(in_flight=64, busy_since=0.0, answered_at=float(t))
        assert replicas.verdict(endpoints.SLOW, busy, look, t + 1.0, grace, hang) is None
    # requests in flight and no answer for hang_timeout: hung, whatever /health says
    stuck = seen(in_flight=3, busy_since=50.0, answered_at=40.0)
    assert replicas.verdict(endpoints.OK, stuck, replicas.Look(), 649.0, grace, hang) is None
    assert replicas.verdict(endpoints.OK, stuck, replicas.Look(), 650.0, grace, hang) == \
        "answered none of its 3 requests in flight for 600 s: hung (deployment.hang_timeout)"
    # idle, and the health check answers nothing: hung after hang_timeout, not before
    look = replicas.Look()
    assert replicas.verdict(endpoints.SLOW, seen(), look, 10.0, grace, hang) is None
    assert replicas.verdict(endpoints.SLOW, seen(), look, 609.0, grace, hang) is None
    assert "its health check included, for 600 s: hung" in replicas.verdict(endpoints.SLOW, seen(), look, 610.0,
                                                                             grace, hang)
    assert replicas.verdict(endpoints.SLOW, None, replicas.Look(), 0.0, grace, hang) == "was taken out of the gate"


def keep_posting(g: gate.Gate, seconds: float, workers: int = 4) -> list[int]:
    """Requests through the gate, `workers` at a time, for `seconds`: their status codes."""
    end = time.monotonic() + seconds

    def worker() -> list[int]:
        codes = []
        while time.monotonic() < end:
            codes.append(post(g, f"{g.url}/gsm8k/v1/completions"))
        return codes

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [c for f in [pool.submit(worker) for _ in range(workers)] for c in f.result()]


def test_a_server_whose_health_check_takes_20s_while_it_answers_is_not_relaunched():
    """Issue 28: vLLM's /health takes tens of seconds under load. A server whose /health takes 20 s once it has
    requests, and answers them, serves on past the grace period and hang_timeout: not relaunched, nothing failed."""
    launch, said = FakeLauncher("--slow-health", "20", "--delay", "0.05"), []
    with watched(launch, 1, said, restarts=2, hang=2.0) as fleet:
        codes = keep_posting(fleet.gate, 6.0)
        assert not fleet.died.is_set() and fleet.alive()
    assert len(codes) > 50 and set(codes) == {200}
    assert len(launch.procs["server"]) == 1
    assert not [m for m in said if "hung" in m or "died" in m or "refused" in m], said


def test_a_stopped_replica_is_found_hung_within_hang_timeout_and_relaunched_and_no_request_fails():
    """Issue 28: a server stopped with SIGSTOP answers nothing and its health check hangs (the kernel still accepts
    connections). Within hang_timeout it is judged hung, its requests are sent to the other replica, and it is
    relaunched."""
    launch, said = FakeLauncher("--delay", "0.1"), []
    with watched(launch, 2, said, restarts=2, hang=2.0, budget=4) as fleet, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        traffic = pool.submit(keep_posting, fleet.gate, 8.0)
        time.sleep(1.0)
        stopped = launch.procs["server-replica-1"][0]
        stopped.send_signal(signal.SIGSTOP)
        at = time.monotonic()
        while not any("server-replica-1" in m and "hung" in m for m in said) and time.monotonic() - at < 15:
            time.sleep(0.05)
        found = time.monotonic() - at
        codes = traffic.result()
        deadline = time.monotonic() + 20
        while len(fleet.serving) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fleet.died.is_set()
    assert set(codes) == {200} and len(codes) > 40
    assert 2.0 <= found < 2.0 + 3.0, said  # hang_timeout, plus a look of the watch and its 1 s probe
    assert any("server-replica-1 died" in m and "relaunching it (1/2)" in m for m in said), said
    assert len(launch.procs["server-replica-1"]) == 2 and fleet.relaunched == 1
    assert stopped.poll() is not None  # the stopped server was killed, not left behind


def test_a_lone_stopped_server_is_found_hung_and_the_suite_told_and_its_requests_answered():
    """With one server, a hang is told to the suite (the flow relaunches it), and the requests it held are answered
    (a 502 the harness counts as infrastructure) instead of waiting for ever."""
    launch, said = FakeLauncher("--delay", "0.1"), []
    with watched(launch, 1, said, restarts=2, hang=2.0) as fleet, concurrent.futures.ThreadPoolExecutor(2) as pool:
        launch.procs["server"][0].send_signal(signal.SIGSTOP)
        held = [pool.submit(post, fleet.gate, f"{fleet.gate.url}/gsm8k/v1/completions") for _ in range(2)]
        assert fleet.died.wait(10)
        assert [f.result(timeout=10) for f in held] == [502, 502]
    assert any("server (job None) answered none of its 2 requests in flight" in m for m in said), said
