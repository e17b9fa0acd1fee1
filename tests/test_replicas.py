"""deployment.replicas, the lifecycle part: N servers launched at once, a dead one out of the gate and relaunched
while the others serve, the suite told only when none serves. Fake servers (processes) stand in for vLLM here to
kill them at exact moments; the same flow on real vLLM servers is in test_replicas_served.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
import threading
import time

import pytest

from nemotron import endpoints, gate, replicas
from nemotron.endpoints import Endpoint, free_port
from nemotron.errors import ServeError
from nemotron.serving import ServerHandle
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
def watched(launch: FakeLauncher, count: int, said: list[str], restarts: int):
    """Healthy replicas behind a gate, watched: the fleet."""
    with replicas.serve(launch, count, said.append, restarts=restarts, interval=0.2) as fleet:
        fleet.wait_ready()
        with gate.open_gate(fleet.urls(), budget=2) as g:
            fleet.watch(g)
            yield fleet


def test_the_suite_is_told_only_when_no_replica_serves():
    launch, said = FakeLauncher(), []
    with watched(launch, 2, said, restarts=0) as fleet:
        launch.procs["server-replica-2"][0].kill()
        time.sleep(1.5)
        assert not fleet.died.is_set() and fleet.alive()  # one serves on: max_restarts=0 only stops the relaunch
        assert any("not relaunched: deployment.max_restarts=0 reached; server-replica-1 serves on" in m for m in said)
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
