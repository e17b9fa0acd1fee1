"""Where benchmarks send requests, and whether the server there answers: the endpoint of a server we launched, or
of one that already runs (deployment.type none)."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from nemotron.config.schema import DeploymentSection
from nemotron.errors import ServeError
from nemotron.serving import engines

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Endpoint:
    """Where the benchmarks send requests."""

    base_url: str  # http://host:port
    model_id: str
    health_path: str = "/health"
    api_key_env: str | None = None  # a running endpoint's key is in this variable: read when sending, never stored

    @property
    def health_url(self) -> str:
        return f"{self.base_url}{self.health_path}"

    def headers(self) -> dict[str, str]:
        """What every request to the server carries: its key as a bearer token, when it has one."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/v1/completions"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"


LISTEN_PORTS_FROM = 10000  # the lowest port we pick for a server of ours
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def listen_ports() -> range | list[int]:
    """Where a server of ours listens: below the kernel's ephemeral range. A port from that range (what binding
    to port 0 returns) is also the local end the kernel gives outgoing connections, so between the probe and the
    server's own bind a harness's or the Prefect client's connection can take it ("Address already in use",
    seen in CI); below it only servers that bind on purpose compete, and a bind probe sees them."""
    try:
        low = int(open(EPHEMERAL_RANGE).read().split()[0])  # noqa: SIM115 - one read of a proc file
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return range(LISTEN_PORTS_FROM, max(low, LISTEN_PORTS_FROM + 1000))


def free_port(host: str = "127.0.0.1") -> int:
    """A port no socket holds now, outside the ephemeral range (random: two runs starting together rarely
    pick the same one, and the bind probe sees one that listens already)."""
    ports = listen_ports()
    for port in random.sample(ports, min(200, len(ports))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise ServeError(f"no free port in {ports[0]}-{ports[-1]} on {host}")


def healthy(url: str, headers: dict[str, str] | None = None) -> bool:
    """The server's health URL answers 200."""
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


OK, REFUSED, UNHEALTHY, SLOW = "ok", "refused", "unhealthy", "slow"


def probe(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> str:
    """What the health URL does: answers 200 (OK), refuses the connection (REFUSED: nothing listens), answers
    another status (UNHEALTHY), or answers nothing in `timeout` (SLOW: loaded, or hung; vLLM's `/health` can take
    tens of seconds under load)."""
    try:
        status = httpx.get(url, headers=headers, timeout=timeout).status_code
    except httpx.TimeoutException:
        return SLOW
    except httpx.HTTPError:
        return REFUSED
    return OK if status == 200 else UNHEALTHY


def reported_version(endpoint: Endpoint) -> str | None:
    """The version the engine itself reports (vLLM's `GET /version`), None when it reports none: what served,
    measured, for a record whose version could not be known before launching (an image, a node's PATH)."""
    try:
        r = httpx.get(f"{endpoint.base_url}/version", headers=endpoint.headers(), timeout=5)
        version = r.json().get("version") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(version) if isinstance(version, (str, int, float)) and str(version) else None


def of_running(dep: DeploymentSection) -> Endpoint:
    """deployment.type none: where the running server is (no request sent)."""
    return Endpoint(engines.external_url(dep.url), dep.served_model_name, engines.health_path(dep), dep.api_key_env)


def running(dep: DeploymentSection, say: Callable[[str], None]) -> Endpoint:
    """deployment.type none: the server at deployment.url, once its health path answers (startup_timeout)."""
    engines.api_key(dep)  # a key variable that is not set: refused before any request
    endpoint = of_running(dep)
    say(f"[serve] the running endpoint {endpoint.base_url} (deployment.type none): nothing is launched or stopped")
    deadline = time.monotonic() + dep.startup_timeout
    while not healthy(endpoint.health_url, endpoint.headers()):
        if time.monotonic() > deadline:
            raise ServeError(f"the endpoint {endpoint.health_url} did not answer 200 within "
                             f"{dep.startup_timeout:.0f} s (deployment.startup_timeout); check deployment.url, "
                             "health_path and api_key_env")
        time.sleep(POLL_SECONDS)
    return endpoint
