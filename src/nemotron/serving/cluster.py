"""Where the server job runs: NeMo-Run executors and tunnels built from an env.toml profile.

No profile (or `executor = "local"`) gives NeMo-Run's LocalExecutor on this machine. A Slurm
profile gives a SlurmExecutor reached through a LocalTunnel (we are on the cluster) or an
SSHTunnel (a login node); a container image runs the server under pyxis, squashed once to an
enroot `.sqsh` on the cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron.config import models
from nemotron.config.profiles import Profile
from nemotron.config.schema import DeploymentSection
from nemotron.errors import ConfigError, ServeError
from nemotron.serving import endpoints, engines, runtime

JOB_NAME_PREFIX = "nemotron-eval."


def nemo_run(home: str):
    """Import NeMo-Run with its home set (it reads NEMORUN_HOME at import time)."""
    if "/nemo_run" in home:  # NeMo-Run rewrites "/nemo_run" in non-container sbatch scripts
        raise ConfigError(f"NeMo-Run home {home!r} contains '/nemo_run', which NeMo-Run rewrites in "
                          "sbatch scripts; choose another directory (NEMORUN_HOME or the profile's remote_job_dir)")
    os.environ["NEMORUN_HOME"] = home
    with warnings.catch_warnings():  # leptonai (via nemo_run) imports a deprecated starlette module
        warnings.simplefilter("ignore")
        import nemo_run
        from nemo_run.config import set_nemorun_home
    set_nemorun_home(home)
    # An Experiment's __del__ calls deconfigure_logging(), which removes the root logger's first handler, whoever
    # added it: when the garbage collector took a finished server's Experiment (a time of its choosing), Prefect's
    # console handler went, and every log line after it (the W&B line of test_e2e, 1 run in 3) never reached the
    # console. logging_kept() already puts the root's handlers back after each NeMo-Run call, so there is nothing
    # left for it to remove.
    importlib.import_module("nemo_run.run.experiment").deconfigure_logging = _keep_root_handlers
    return nemo_run


def _keep_root_handlers() -> None:
    """NeMo-Run's deconfigure_logging, made harmless (see nemo_run above)."""


def nemorun_home(profile: Profile | None) -> str:
    """Experiment metadata lives here. With a LocalTunnel it is also the job directory the compute
    nodes read, so a profile's remote_job_dir (a shared filesystem) wins."""
    if profile is not None and profile.executor == "slurm" and profile.tunnel == "local" and profile.remote_job_dir:
        return os.path.expanduser(profile.remote_job_dir)
    return os.environ.get("NEMOTRON_NEMORUN_HOME") or str(runtime.home() / "nemorun")


def is_slurm(profile: Profile | None) -> bool:
    return profile is not None and profile.executor == "slurm"


def is_remote(profile: Profile | None) -> bool:
    """The cluster's disk is not ours: we reach it through the login node (tunnel = ssh)."""
    return is_slurm(profile) and profile.tunnel == "ssh"


def image_for(dep: DeploymentSection, profile: Profile | None) -> str | None:
    """The server container: `deployment.image`, else the profile's container_image (Slurm only; none for a
    running endpoint)."""
    if not is_slurm(profile) or not engines.launches(dep):
        return None
    return dep.image or profile.container_image


def check_resources(dep: DeploymentSection, profile: Profile | None) -> None:
    """Refuse before submitting when the parallelism cannot fit the profile's GPUs, or replicas on this machine
    would share one fixed port."""
    if not is_slurm(profile) and dep.replicas > 1 and dep.port:
        raise ConfigError(f"deployment.port={dep.port} with deployment.replicas={dep.replicas} on this machine: the "
                          "replicas cannot all take that port; set deployment.port=0 (each picks a free one)")
    if not is_slurm(profile) or profile.gpus_per_node is None or not engines.launches(dep):
        return
    need = dep.tensor_parallel_size * dep.data_parallel_size
    have = profile.gpus_per_node * profile.nodes
    if need > have:
        raise ConfigError(
            f"deployment.tensor_parallel_size={dep.tensor_parallel_size} x data_parallel_size="
            f"{dep.data_parallel_size} needs {need} GPUs, but profile {profile.name!r} gives "
            f"{profile.gpus_per_node} per node x {profile.nodes} node(s) = {have}"
        )


_kept_lock = threading.Lock()
_kept: list = []  # [(handlers, level) saved by the outermost entry, None per entry]


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """NeMo-Run's Experiment replaces the root logger's handlers (basicConfig force=True) on entry
    and removes one on exit; keep the caller's logging (Prefect's console and API handlers) intact.
    Replicas start in threads at once: what the first entry saw is what every exit restores."""
    root = logging.getLogger()
    with _kept_lock:
        if not _kept:
            _kept.append((root.handlers[:], root.level))
        _kept.append(None)  # one entry deeper
        handlers, level = _kept[0]
    try:
        yield
    finally:
        with _kept_lock:
            root.handlers[:] = handlers
            root.setLevel(level)
            _kept.pop()
            if len(_kept) == 1:
                _kept.clear()


@dataclass
class Target:
    """A NeMo-Run executor plus a tunnel for shell commands where the job's files live."""

    executor: Any
    tunnel: Any
    home: str
    slurm: bool
    ssh: bool

    def sh(self, command: str, check: bool = True) -> str:
        return shell(self.tunnel, command, check).stdout


def shell(tunnel, command: str, check: bool = False):
    """Run a command where the job's files are (never reading our stdin); an invoke Result."""
    connected(tunnel)
    return tunnel.run(command, hide=True, warn=not check, in_stream=False)


_CONNECTING = threading.Lock()


def connected(tunnel):
    """The tunnel, its SSH session opened anew if the connection dropped (NeMo-Run's `connect()` makes a new one
    when the old is not connected); one thread reconnects while the others (job polls, file reads) wait for it."""
    with _CONNECTING:
        tunnel.connect()
    return tunnel


def target_for(run, profile: Profile | None, dep: DeploymentSection, image: str | None, detached: bool,
               home: str) -> Target:
    """The executor for the server job. `run` is the imported nemo_run module."""
    if not is_slurm(profile):
        return Target(run.LocalExecutor(), run.LocalTunnel(job_dir=""), home, slurm=False, ssh=False)
    return _slurm_target(run, profile, home, partition=profile.partition_for(detached),
                         nodes=profile.nodes, ntasks_per_node=profile.ntasks_per_node,
                         gpus_per_node=profile.gpus_per_node or None, cpus_per_task=profile.cpus_per_task,
                         mem=profile.mem, exclusive=profile.exclusive, container_image=image,
                         container_mounts=list(profile.mounts) if image else [],
                         packager=run.Packager())  # nothing to package: the job runs one inline script


def flow_target(run, profile: Profile, home: str, packager) -> Target:
    """The executor for a detached evaluation's flow job: one CPU task on the batch partition, no container (the
    flow runs in the uv environment built on the cluster), the project's code shipped by `packager`; its time is
    set by the submission (`flow_time`)."""
    return _slurm_target(run, profile, home, partition=profile.partition_for(True), nodes=1, ntasks_per_node=1,
                         packager=packager)


FLOW_TIME_DEFAULT = "1-00:00:00"  # a detached flow job's allocation when its partition allows more (or anything)


def flow_time(target: Target, profile: Profile) -> str:
    """A detached flow job's walltime when run.flow_time is not set: its partition's maximum, at most a day."""
    from nemotron.config.schema import slurm_seconds

    part = profile.partition_for(True)
    limit = target.sh(f"sinfo -h -o %l {'-p ' + shlex.quote(part) if part else ''} | head -1", check=False).strip()
    try:
        return limit if slurm_seconds(limit) < slurm_seconds(FLOW_TIME_DEFAULT) else FLOW_TIME_DEFAULT
    except ValueError:  # "infinite", unreadable
        return FLOW_TIME_DEFAULT


def _ssh_tunnel(run, profile: Profile):
    return run.SSHTunnel(host=profile.host, user=profile.user, identity=profile.identity,
                         job_dir=profile.remote_job_dir)


def _slurm_target(run, profile: Profile, home: str, **resources) -> Target:
    if profile.tunnel == "ssh":
        tunnel = _ssh_tunnel(run, profile)
    else:
        tunnel = run.LocalTunnel(job_dir=os.path.join(home, "experiments"))  # must be <NEMORUN_HOME>/experiments
    executor = run.SlurmExecutor(account=profile.account or "", time=profile.time, env_vars=profile.job_env(),
                                 job_name_prefix=JOB_NAME_PREFIX, tunnel=tunnel, poll_estimated_start_time=False,
                                 **resources)
    return Target(executor, tunnel, home, slurm=True, ssh=profile.tunnel == "ssh")


def put(target: Target, local: str, remote: str) -> None:
    """A file from here to the cluster's disk."""
    if target.ssh:
        target.tunnel.put(local, remote)
    else:
        shutil.copyfile(local, remote)


def write_private(target: Target, profile: Profile | None, text: str, suffix: str = ".env") -> str:
    """A file only the job's user can read, beside the job folders but not in them (they are kept and
    copied; this is removed once the job has ended for good); returns its path where the job runs."""
    base = profile.remote_job_dir if target.ssh else target.home
    folder = f"{base.rstrip('/')}/.secrets"
    name = f"{folder}/{uuid.uuid4().hex}{suffix}"
    fd, local = tempfile.mkstemp(prefix="nemotron-secrets-")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        target.sh(f"umask 077 && mkdir -p {shlex.quote(folder)} && chmod 700 {shlex.quote(folder)}")
        if target.ssh:
            target.tunnel.put(local, name)
            target.sh(f"chmod 600 {shlex.quote(name)}")
        else:
            shutil.move(local, name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(local)
    if target.executor is not None and getattr(target.executor, "container_image", None):
        target.executor.container_mounts.append(f"{folder}:{folder}")  # the job reads it inside the container
    return name


def connect(target: Target, profile: Profile) -> None:
    """Log in to the login node now, without prompting: a bad key is a clear error, not a hang."""
    if not target.ssh:
        return

    def no_prompt(*_args):
        raise RuntimeError("interactive SSH authentication is not available")

    target.tunnel.auth_handler = target.tunnel.fallback_auth_handler = no_prompt
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NeMo-Run's console says "Connecting to ..."
            target.tunnel.connect()
    except (SystemExit, Exception) as e:  # NeMo-Run sys.exit(1)s when authentication fails
        detail = "" if isinstance(e, SystemExit) else f": {type(e).__name__}: {e}"
        raise ServeError(f"cannot log in to {profile.user}@{profile.host} over SSH (profile {profile.name!r}){detail}; "
                         "check host, user and identity (a key the login node accepts, or one in ssh-agent)") from None


@contextlib.contextmanager
def login_shell(profile: Profile) -> Iterator[Target]:
    """A shell where the cluster's files are: its login node over SSH, or here when this machine is part of the
    cluster (tunnel = local)."""
    home = nemorun_home(profile)
    run = nemo_run(home)
    if not is_remote(profile):
        yield Target(None, run.LocalTunnel(job_dir=""), home, slurm=True, ssh=False)
        return
    tunnel = _ssh_tunnel(run, profile)
    target = Target(None, tunnel, home, slurm=True, ssh=True)
    connect(target, profile)
    try:
        yield target
    finally:
        with contextlib.suppress(Exception):
            tunnel.cleanup()


# What a Hugging Face tokenizer loads (AutoTokenizer reads config.json for the class): small files, not weights.
TOKENIZER_FILES = re.compile(r"tokenizer.*|vocab\..*|merges\.txt|special_tokens_map\.json|added_tokens\.json|"
                             r"(generation_)?config\.json|chat_template.*|.*\.tiktoken|.*\.model")


def remote_checkpoint(profile: Profile, path: str, tokenizer: str,
                      say: Callable[[str], None]) -> tuple[tuple[int, int], str | None]:
    """A checkpoint on the cluster's disk, seen through the login node: its tree's (newest mtime, size) for the
    result key, and a local copy of its tokenizer files (in `tokenizer`: the checkpoint, or a folder in it) for the
    log-likelihood tasks (which tokenize here), cached by path and identity. ConfigError if the cluster has no
    such checkpoint."""
    with login_shell(profile) as login:
        listing = shell(login.tunnel, models.tree_stat_command(path))
        if not listing.ok or not listing.stdout.strip():
            raise ConfigError(f"checkpoint {path} does not exist on the cluster (profile {profile.name!r}, "
                              f"{profile.user}@{profile.host}): {listing.stderr.strip() or 'no files'}")
        tree = models.parse_tree_stat(listing.stdout)
        names = [n for n in login.sh(f"ls -1p {shlex.quote(tokenizer)} 2>/dev/null", check=False).splitlines()
                 if TOKENIZER_FILES.fullmatch(n)]
        if not names:
            say(f"{tokenizer} on the cluster has no tokenizer files: log-likelihood tasks get that path as the "
                "tokenizer (set params.extra.tokenizer to a local copy if they fail)")
            return tree, None
        key = hashlib.sha256(f"{profile.host}:{path}@{tree}".encode()).hexdigest()[:16]
        dest = runtime.home() / "tokenizers" / f"{os.path.basename(path.rstrip('/'))}-{key}"
        if not (dest / ".complete").exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=dest.parent))
            for name in names:
                login.tunnel.get(f"{tokenizer.rstrip('/')}/{name}", str(part / name))
            (part / ".complete").write_text(f"{profile.host}:{path}@{tree}\n")
            with contextlib.suppress(OSError):  # another run copied it first: theirs is the same
                part.rename(dest)
            shutil.rmtree(part, ignore_errors=True)
            say(f"copied the tokenizer of {path} ({', '.join(names)}) from the cluster to {dest}")
        return tree, str(dest)


def remote_package_version(profile: Profile, venv: str, package: str) -> str | None:
    """The version of `package` installed in a venv on the cluster's disk (its dist-info folder's name), read
    through the login node; None when it has none or the login node cannot be reached."""
    pattern = f"{_shell_path(venv.rstrip('/'))}/lib/python*/site-packages/{package}-*.dist-info"
    found = _look(profile, f"ls -d {pattern} 2>/dev/null | head -1")
    return engines.dist_version(os.path.basename(found), package) if found else None


def file_stamp(profile: Profile, path: str) -> str | None:
    """A file's size and modification time on the cluster's disk (what rsync compares: a re-imported image file
    changes both), read where the cluster's files are; None when it is not there or cannot be read."""
    found = _look(profile, f"stat -L -c '%s bytes, modified %Y' {_shell_path(path)} 2>/dev/null")
    return found if found.endswith(tuple("0123456789")) else None


def _shell_path(path: str) -> str:
    """A path for the login node's shell, quoted, with a leading `~/` left to it."""
    return '"$HOME"/' + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def _look(profile: Profile, command: str) -> str:
    """One read-only command where the cluster's files are; its stdout, or "" when that place cannot be reached
    (the caller treats "" as unknown, which never lets a result be reused)."""
    try:
        with login_shell(profile) as login:
            return login.sh(command, check=False).strip()
    except Exception:  # noqa: BLE001 - unknown is the fail-closed answer
        return ""


class PortForward:
    """127.0.0.1:<local_port> → host:port through the login node, by OpenSSH's client (`ssh -N -L`).

    OpenSSH moves the bytes in C in its own process. paramiko did it in the flow's process, and its packetizer and
    crypto took a core at a budget of 2,048 on the machine that also runs the harnesses (perf/scale.py over SSH:
    0.31x of lm-eval alone with paramiko, 0.91x with this). A connection refused while the server still loads
    closes only that client. When the SSH connection drops, ssh exits and a new one starts on the same local port:
    the connections it carried close, as the server's own would; the server is not touched. It logs in as the
    tunnel does (host, user, identity; never a prompt) and honours ~/.ssh/config (a ProxyJump, say). It runs under
    the reaper, so it cannot outlive the flow, even a `kill -9`ed one.
    """

    RESTART_SECONDS = 1.0

    def __init__(self, login: str, user: str | None, identity: str | None, host: str, port: int,
                 ready_seconds: float = 30.0):
        name, _, login_port = login.rpartition(":") if login.count(":") == 1 else (login, "", "")
        self.local_port = endpoints.free_port()  # outside the ephemeral range: still free when ssh restarts
        self.command = ["ssh", "-N", "-T", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                        "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=15",
                        "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
                        *(["-p", login_port] if login_port else []), *(["-i", identity] if identity else []),
                        "-L", f"127.0.0.1:{self.local_port}:{host}:{port}", f"{user}@{name}" if user else name]
        self.closed = threading.Event()
        self._errors = tempfile.TemporaryFile()
        self._proc = self._start()
        self._wait_listening(ready_seconds)
        threading.Thread(target=self._keep, name="ssh-forward", daemon=True).start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "nemotron.benchmarks.reaper", *self.command],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._errors,
                                start_new_session=True)

    def _wait_listening(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self._proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.local_port), 0.5):
                return
            time.sleep(0.1)
        self.close()
        self._errors.seek(0)
        said = self._errors.read().decode(errors="replace").strip().splitlines()
        raise ServeError(f"the SSH port forward ({shlex.join(self.command)}) did not start"
                         + (f": {said[-1]}" if said else ""))

    def _keep(self) -> None:
        """A new ssh whenever the last one exits (its connection dropped), until closed."""
        while True:
            self._proc.wait()
            if self.closed.wait(self.RESTART_SECONDS):
                return
            self._proc.stdin.close()
            self._proc = self._start()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)  # its own session: the reaper and ssh
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc.stdin.close()  # the reaper's pipe: should anything be left, it goes


# --- container images: squash once to an enroot .sqsh on the cluster ---------------------------

def is_squashed(image: str) -> bool:
    return image.endswith(".sqsh")


def squash_path(profile: Profile, image: str) -> str:
    """A stable file name derived from the image, under the profile's remote_job_dir."""
    base = profile.remote_job_dir or nemorun_home(profile)
    return f"{base.rstrip('/')}/containers/{re.sub(r'[^A-Za-z0-9]', '_', image)}.sqsh"


def enroot_uri(image: str) -> str:
    """`nvcr.io/nvidia/vllm:25.11` → `docker://nvcr.io#nvidia/vllm:25.11` (enroot separates the registry)."""
    if "://" in image:
        return image
    first, _, rest = image.partition("/")
    if rest and "#" not in image and ("." in first or ":" in first or first == "localhost"):
        image = f"{first}#{rest}"
    return f"docker://{image}"


def squash_command(profile: Profile, image: str, path: str, force: bool) -> str:
    """`enroot import` on a compute node (login nodes lack the memory), through salloc + srun. It writes a partial
    file and renames it once complete, under a lock beside it: an import that was interrupted leaves no `.sqsh`
    that a later run would take for the image, and two runs never import the same image at once."""
    folder = os.path.dirname(path)
    partial = f"{path.removesuffix('.sqsh')}.partial.sqsh"
    enroot = (f"export ENROOT_RUNTIME_PATH={folder}/.enroot/runtime ENROOT_CACHE_PATH={folder}/.enroot/cache "
              f"ENROOT_DATA_PATH={folder}/.enroot/data; rm -f {shlex.quote(partial)}; "
              f"enroot import --output {shlex.quote(partial)} {shlex.quote(enroot_uri(image))} && "
              f"mv -f {shlex.quote(partial)} {shlex.quote(path)}")
    alloc = ["salloc"]
    if profile.account:
        alloc.append(f"--account={profile.account}")
    partition = profile.build_partition or profile.partition
    if partition:
        alloc.append(f"--partition={partition}")
    alloc += ["--nodes=1", "--ntasks-per-node=1", f"--time={profile.build_time or profile.time}"]
    if profile.build_include_gpus and (profile.build_gpus_per_node or profile.gpus_per_node):
        alloc.append(f"--gpus-per-node={profile.build_gpus_per_node or profile.gpus_per_node}")
    remove = f"rm -f {shlex.quote(path)} && " if force else f"test -f {shlex.quote(path)} || "
    locked = f"{remove}{' '.join(alloc)} srun --export=ALL bash -c {shlex.quote(enroot)}"
    return f"mkdir -p {shlex.quote(folder)} && flock {shlex.quote(path + '.lock')} bash -c {shlex.quote(locked)}"


def squash_step(profile: Profile, image: str, force: bool) -> tuple[str, str]:
    """The `.sqsh` path for `image` on the cluster and the shell line that makes it (a no-op when it is there,
    unless forced), as the submitting machine runs it: directly, or through `ssh` to the login node."""
    path = squash_path(profile, image)
    return path, on_login_node(profile, squash_command(profile, image, path, force))


def on_login_node(profile: Profile, command: str) -> str:
    """`command` where the cluster's tools are: as is on a cluster node (tunnel = local), else over the system
    `ssh` client to the profile's login node (its known_hosts and agent apply, as for NeMo-Run's rsync)."""
    if profile.tunnel != "ssh":
        return command
    host, _, port = (profile.host or "").partition(":")
    ssh = ["ssh", "-o", "BatchMode=yes", *(["-p", port] if port else []),
           *(["-i", profile.identity] if profile.identity else []), f"{profile.user}@{host}"]
    return " ".join(map(shlex.quote, ssh)) + " " + shlex.quote(command)
