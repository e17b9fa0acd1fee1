"""`--batch PROFILE` without a Prefect deployment: the whole evaluation, detached, as a Slurm job in the cluster.

The submitting machine (a laptop) ships the project's code with a NeMo-Run packager, builds the Python
environment on the cluster with uv from `uv.lock` (on the login node: compute nodes often have no internet;
cached under the profile's `remote_job_dir` by the lock's hash), submits one CPU job that runs the same flow
there with `--run PROFILE`, and exits. In the cluster the flow is next to the checkpoint and its tokenizer; it
serves through the profile as an attached run does — its own vLLM job, so the flow job needs no GPU and the server
job keeps the profile's partition, time and container — and writes results on the cluster's disk. It reports to
a Prefect API if the submitter had one, else to an ephemeral one; `eval status JOB` / `eval logs JOB` read the
job's Slurm state, its log and its results over the tunnel.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron.config import profiles, secrets
from nemotron.config.profiles import Profile
from nemotron.config.request import EvalRequest
from nemotron.config.schema import slurm_seconds
from nemotron.errors import ConfigError
from nemotron.records import results, runs, wandb_export
from nemotron.serving import cluster, runtime

PROJECT = Path(__file__).resolve().parents[3]  # what the job needs of it: the code, the configs, the lock
SHIPPED = ("src", "flows", "config", "pyproject.toml", "uv.lock")
JOB_NAME = "flow"


@dataclass(frozen=True)
class Submitted:
    job_id: str
    job_dir: str  # on the cluster
    output_dir: str  # where the results folder will be, on the cluster
    environment: str
    built: bool  # the environment was built for this submission (not reused)
    flow_time: str = ""  # each allocation's walltime


def environment_dir(profile: Profile) -> str:
    """The job's Python environment on the cluster: one per lock file, reused by every later submission."""
    digest = hashlib.sha256(b"".join((PROJECT / f).read_bytes() for f in ("pyproject.toml", "uv.lock"))).hexdigest()
    return f"{profile.remote_job_dir.rstrip('/')}/envs/{digest[:16]}"


def build_environment(target: cluster.Target, profile: Profile, say: Callable[[str], None]) -> tuple[str, bool]:
    """`uv sync --frozen` on the login node into environment_dir (uv installed for the user if missing);
    a ready environment is reused. Returns (its folder, whether it was built now)."""
    folder = environment_dir(profile)
    q = shlex.quote(folder)
    if target.sh(f"test -f {q}/.ready && echo ready", check=False).strip() == "ready":
        return folder, False
    say(f"building the job's Python environment on the cluster with uv from uv.lock: {folder}")
    target.sh(f"mkdir -p {q}")
    for name in ("pyproject.toml", "uv.lock"):
        cluster.put(target, str(PROJECT / name), f"{folder}/{name}")
    started = time.monotonic()
    # UV_NATIVE_TLS: the login node's trust store, where a site's TLS-inspecting proxy has its CA (uv's bundled
    # roots do not hold it; a login shell over ssh has no SSL_CERT_FILE to point uv there)
    uv = ('export PATH="$HOME/.local/bin:$PATH" UV_NATIVE_TLS=1; '
          'command -v uv >/dev/null || python3 -m pip install -q --user uv')
    result = cluster.shell(target.tunnel, f"{uv} && cd {q} && flock .lock uv sync --frozen --no-dev "
                                          f"--no-install-project --quiet && touch .ready")
    if not result.ok:
        raise ConfigError(f"building the job's environment on the cluster failed (uv sync in {folder}): "
                          + " ".join((result.stderr or result.stdout).split())[-400:])
    say(f"built it in {time.monotonic() - started:.0f} s; later submissions reuse it")
    return folder, True


def cluster_profile(profile: Profile) -> Profile:
    """The profile as the flow sees it inside the cluster: the cluster's disk is local there."""
    return profile.model_copy(update={"tunnel": "local", "host": None, "user": None, "identity": None})


def env_toml(profile: Profile, wandb: profiles.WandbSettings) -> str:
    """The env.toml the job reads: this profile (inside the cluster) and the [wandb] table."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)  # strings, numbers, booleans and lists of strings are the same in TOML

    inside = cluster_profile(profile).model_dump(exclude={"name"}, exclude_none=True, by_alias=False)
    if inside.get("env_vars"):  # a secret's value comes from the job's private file, by its name
        inside["env_vars"] = {k: f"${{{k}}}" if k in profile.secret_env() else v for k, v in inside["env_vars"].items()}
    lines = [f"[{json.dumps(profile.name)}]", *(f"{k} = {value(v)}" for k, v in inside.items())]
    if wandb.entity or wandb.project:
        lines += ["", "[wandb]", *(f"{k} = {json.dumps(v)}" for k, v in wandb.model_dump(exclude_none=True).items())]
    return "\n".join(lines) + "\n"


ALLOCATIONS, NEXT, FINISHED, CANCELLED, BEGAN = "allocations", "next", "finished", "cancelled", "began"


def continuation(flow_seconds: int, max_seconds: int) -> list[str]:
    """The job's first lines: note this allocation, stop at once if the evaluation already ended (or was
    cancelled), and, while run.max_walltime allows another allocation, queue the next one: the same sbatch script,
    started only if this allocation ends in failure (a time limit, a preemption, a node failure; the flow writes
    `finished` when it ends on its own, whatever its outcome), and dropped by Slurm if this one completes."""
    return [
        'echo "$SLURM_JOB_ID" >> "$JOB_DIR/allocations"',
        f'if [ -e "$JOB_DIR/{FINISHED}" ] || [ -e "$JOB_DIR/{CANCELLED}" ]; then',
        '  echo "nemotron: the evaluation ended in an earlier allocation (or was cancelled): nothing to do"; exit 0',
        "fi",
        f'[ -s "$JOB_DIR/{BEGAN}" ] || date +%s > "$JOB_DIR/{BEGAN}"',
        f'queued="$(cat "$JOB_DIR/{NEXT}" 2>/dev/null)"',
        # a requeue of this job runs these lines again: its continuation is queued already
        'if [ -n "$queued" ] && [ "$queued" != "$SLURM_JOB_ID" ] && squeue -h -j "$queued" 2>/dev/null | grep -q .; '
        "then :",
        f'elif [ $(( $(date +%s) - $(cat "$JOB_DIR/{BEGAN}") + {flow_seconds} )) -le {max_seconds} ]; then',
        '  next="$(sbatch --parsable --requeue --kill-on-invalid-dep=yes --dependency=afternotok:$SLURM_JOB_ID '
        '"$JOB_DIR/../flow_sbatch.sh")" && echo "${next%%;*}" > "$JOB_DIR/next"',
        "else",
        '  echo "nemotron: no further allocation: run.max_walltime would be exceeded" >&2',
        "fi",
        'export NEMOTRON_JOB_DIR="$JOB_DIR"',
    ]


def job_script(request: EvalRequest, profile: Profile, environment: str, secrets_file: str | None,
               prefect_api: str | None, config_file: str | None, chain: list[str] | None = None) -> str:
    """The flow job: no secret in it (they come from a private file, kept while Slurm may run the job again and
    removed by a job that waits for its end), the code shipped beside it, the evaluation as `eval --run PROFILE`
    from the cluster's job folder (a relative output_dir lands there). `chain`: `continuation()`'s lines."""
    args = ["nano3", "eval", "-c", config_file or request.config, *(a for t in request.tasks or () for a in ("-t", t)),
            "--run", profile.name, *(["--force-squash"] if request.force_squash else []), *request.overrides]
    marker = f"NEMOTRON_ENV_{uuid.uuid4().hex[:8]}"
    names = secrets.secret_env_names()
    lines = ['JOB_DIR="$(cd "$(dirname "$0")/.." && pwd)"', *(chain or []),
             *([f"unset {' '.join(names)}"] if names else []),
             "unset PREFECT_API_KEY PREFECT_API_URL"]
    if secrets_file:
        f = shlex.quote(secrets_file)
        lines.append(f"if [ -f {f} ]; then set -a; . {f}; set +a; else echo missing {f} >&2; fi")
    wandb = profiles.wandb_settings()
    lines += [
        f"cat > \"$JOB_DIR/env.toml\" <<'{marker}'", env_toml(profile, wandb).rstrip("\n"), marker,
        'export NEMOTRON_ENV_FILE="$JOB_DIR/env.toml" NEMOTRON_RUN_RECORD="$JOB_DIR/run.json"',
        'export PYTHONPATH="$JOB_DIR/code/src:$JOB_DIR/code" PREFECT_HOME="$JOB_DIR/prefect"',
        f"export VIRTUAL_ENV={shlex.quote(environment + '/.venv')}",
        'export PATH="$VIRTUAL_ENV/bin:$PATH" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 '
        'NEMO_EVALUATOR_TELEMETRY_LEVEL=0',
        *([f"export PREFECT_API_URL={shlex.quote(prefect_api)}"] if prefect_api else []),
        f"cd {shlex.quote(profile.remote_job_dir)}",
        # exec: the flow is the step's process, which Slurm signals and, after KillWait, kills with all it started
        "exec python -m nemotron.cli " + " ".join(map(shlex.quote, args)),
    ]
    return "\n".join(lines)


HUB_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def secrets_for(request: EvalRequest, profile: Profile, api_key_env: str | None) -> dict[str, str]:
    """`job_secrets` for this request: the secret variables its config and overrides read."""
    from nemotron.config.schema import env_references

    read = env_references(request.config, request.overrides)
    return job_secrets(profile, {n for n in read if secrets.is_secret_name(n) or n.startswith(SECRET_OVERRIDE)},
                       api_key_env)


SECRET_OVERRIDE = "NEMOTRON_SECRET_OVERRIDE_"  # cli.hidden_overrides


def job_secrets(profile: Profile, referenced: set[str], api_key_env: str | None) -> dict[str, str]:
    """What the job needs that may not be in a script, and nothing else of this machine's: the W&B key (its
    variable, else ~/.netrc), the hub token, the running endpoint's key (deployment.api_key_env), the variables
    the config reads (`${oc.env:NAME}`, a secret override's `NEMOTRON_SECRET_OVERRIDE_n` among them) and the
    profile's secret env_vars. An AWS or GitHub key that happens to be set here stays here."""
    env = {k: os.environ[k] for k in (*HUB_TOKENS, *sorted(referenced), *([api_key_env] if api_key_env else []))
           if os.environ.get(k)}
    if key := os.environ.get("WANDB_API_KEY") or wandb_export.api_key():
        env["WANDB_API_KEY"] = key
    return {**env, **profile.secret_env()}


def secrets_text(env: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())


def cleanup_command(profile: Profile, job_id: str, files: list[str], job_dir: str | None = None) -> str:
    """A job that removes the private files once the flow job has ended for good (completed, failed, cancelled,
    never started): Slurm starts it after the job's end, not after a requeue. With `job_dir`, it follows the job's
    allocations: while a next allocation is queued and the evaluation has not finished, it waits for that one's end
    instead (it submits itself again: the command is written to `<job_dir>/cleanup.sh`)."""
    options = ["--parsable", f"--dependency=afterany:{job_id}", f"--job-name={cluster.JOB_NAME_PREFIX}cleanup",
               "--time=00:05:00", "--output=/dev/null", "--ntasks=1",
               *([f"--account={profile.account}"] if profile.account else []),
               *([f"--partition={p}"] if (p := profile.partition_for(True)) else [])]
    remove = "rm -f " + " ".join(map(shlex.quote, files))
    if job_dir is None:
        return f"sbatch {' '.join(map(shlex.quote, options))} --wrap {shlex.quote(remove)}"
    q = shlex.quote(job_dir)
    again = " ".join(map(shlex.quote, [o for o in options if not o.startswith("--dependency")]))
    script = "\n".join([
        "#!/bin/bash",
        f'next="$(cat {q}/{NEXT} 2>/dev/null)"',
        f'if [ ! -e {q}/{FINISHED} ] && [ ! -e {q}/{CANCELLED} ] && [ -n "$next" ] && '
        'squeue -h -j "$next" 2>/dev/null | grep -q .; then',
        f'  sbatch {again} --dependency=afterany:"$next" {q}/cleanup.sh',
        "else",
        f"  {remove}",
        "fi",
    ])
    marker = f"NEMOTRON_CLEANUP_{uuid.uuid4().hex[:8]}"
    return (f"cat > {q}/cleanup.sh <<'{marker}'\n{script}\n{marker}\n"
            f"sbatch {' '.join(map(shlex.quote, options))} {q}/cleanup.sh")


def submit(request: EvalRequest, profile: Profile, prefect_api: str | None, output_dir: str,
           given: dict[str, str], say: Callable[[str], None] = print, flow_time: str | None = None,
           max_walltime: str = "7-00:00:00") -> Submitted:
    """Ship, build (once), submit; returns at once with the job id. `output_dir`: the config's
    evaluation.output_dir (relative: under remote_job_dir, where the job runs); `given`: the secrets the job gets
    (`job_secrets`), through a private file that a second job removes once the flow job has ended for good."""
    if not cluster.is_slurm(profile) or not profile.remote_job_dir:
        raise ConfigError(f"--batch {profile.name} without a Prefect deployment runs the evaluation as a Slurm job: "
                          "the profile needs executor = \"slurm\" and a remote_job_dir (the cluster's shared folder)")
    home = cluster.nemorun_home(profile)
    run = cluster.nemo_run(home)
    target = cluster.flow_target(run, profile, home, packager=run.PatternPackager(
        include_pattern=[str(PROJECT / f) for f in SHIPPED], relative_path=[str(PROJECT)] * len(SHIPPED)))
    cluster.connect(target, profile)
    target.executor.time = flow_time or cluster.flow_time(target, profile)
    chain = continuation(slurm_seconds(target.executor.time), slurm_seconds(max_walltime))
    environment, built = build_environment(target, profile, say)
    private: list[str] = []
    try:
        config_file = None
        if request.config.endswith((".yaml", ".yml")):  # a file of this machine: its text goes as a private file
            config_file = cluster.write_private(target, profile, Path(request.config).expanduser().read_text(),
                                                suffix=".yaml")
            private.append(config_file)
        secrets_file = cluster.write_private(target, profile, secrets_text(given))
        private.append(secrets_file)
        script = job_script(request, profile, environment, secrets_file, prefect_api, config_file, chain)
        with cluster.logging_kept():
            exp = run.Experiment("nano3-eval", executor=target.executor, log_level="WARN", clean_mode=True,
                                 enable_goodbye_message=False, skip_status_at_exit=True)
            with exp:
                exp.add(run.Script(inline=script), name=JOB_NAME)
                with contextlib.redirect_stdout(io.StringIO()):  # its console: "Connecting to ...", the sbatch line
                    exp.run(detach=True)
                job = exp.jobs[0]
                job_id = str(job.handle).rsplit("/", 1)[-1]
                job_dir = os.path.join(job.executor.tunnel.job_dir, Path(job.executor.job_dir).name)  # on the cluster
    except BaseException:  # nothing was submitted: nothing will read them
        with contextlib.suppress(Exception, SystemExit):
            target.sh("rm -f " + " ".join(map(shlex.quote, private)), check=False)
        raise
    cleanup = cluster.shell(target.tunnel, cleanup_command(profile, job_id, private, job_dir))
    if not cleanup.ok:  # the job runs all the same; say where its secrets wait
        say(f"warning: the job that removes the private files after job {job_id} could not be submitted "
            f"({' '.join((cleanup.stderr or cleanup.stdout).split())[-200:]}); remove {' '.join(private)} once it "
            "has ended")
    given = os.path.expanduser(output_dir)
    output_dir = given if given.startswith("/") else f"{profile.remote_job_dir.rstrip('/')}/{given}"
    save(job_id, profile=profile.name, experiment_id=exp._id, job_dir=job_dir, nemorun_home=home,
         output_dir=output_dir, submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return Submitted(job_id, job_dir, output_dir, environment, built, target.executor.time)


# --- the local record of submitted jobs, and what `eval status|logs JOB` read through the tunnel ---------------

def record_dir() -> Path:
    return runtime.home() / "detached"


def save(job_id: str, **fields: Any) -> None:
    record_dir().mkdir(parents=True, exist_ok=True)
    results.write_atomic(record_dir() / f"{job_id}.json", json.dumps({"job_id": job_id, **fields}, indent=2))


def load(job_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((record_dir() / f"{job_id}.json").read_text())
    except (OSError, ValueError):
        return None


def report(record: dict[str, Any], logs: bool = False) -> str:
    """The job's Slurm state, its flow's run record, the server job, and the scores once results.json is there."""
    profile = profiles.load_profile(record["profile"])
    job_id = record["job_id"]
    with cluster.login_shell(profile) as sh:
        allocations, queued = _allocations(sh, record)
        if queued and queued not in allocations and _state(sh, queued) in ("PENDING", "RUNNING"):
            allocations.append(queued)  # waiting to go on: shown; one Slurm dropped never ran: not
        states = {j: _state(sh, j) for j in allocations}
        state = states[job_id]
        lines = [f"job {job_id} on {profile.name} (Slurm): {state}", f"job folder: {record['job_dir']} (cluster)"]
        if state == "PENDING":
            lines[0] += f" ({sh.sh(f'squeue -h -j {job_id} -o %r', check=False).strip()})"
        if len(allocations) > 1:  # the suite went on in later allocations (run.flow_time)
            lines.insert(1, "allocations: " + " → ".join(f"{j} ({states[j]})" for j in allocations))
        run = _read_json(sh, f"{record['job_dir']}/run.json")
        if run:
            lines.append(f"flow run: {run.get('name')} ({run.get('flow_run_id')})")
            for server in runs.servers(run):
                lines.append(f"server job: {server.get('job_id')} ({server.get('state', 'running or starting')})"
                             + (f" [{server['name']}]" if server.get("name", "server") != "server" else ""))
            lines.append(f"results: {run.get('run_dir')} (cluster)")
            path = f"{run.get('run_dir')}/results.json"
            if summary := _read_json(sh, path):
                lines += ["", results.render_table(results.summary_from_doc(summary, path))]
        else:
            lines.append("flow: not started yet (the job is queued or starting)")
        if logs:
            q = shlex.quote(record["job_dir"])
            lines += ["", "job log (last 60 lines):",
                      sh.sh(f"f=$(ls -t {q}/log-*.out 2>/dev/null | head -1); tail -n 60 \"${{f:-/dev/null}}\"",
                            check=False).rstrip() or "(no log yet)"]
    return secrets.mask("\n".join(lines))


def _state(sh: cluster.Target, job_id: str) -> str:
    q = shlex.quote(job_id)
    return sh.sh(f"sacct -n -X -P -j {q} -o State 2>/dev/null | head -1", check=False).strip() \
        or sh.sh(f"squeue -h -j {q} -o %T", check=False).strip() or "UNKNOWN"


def _allocations(sh: cluster.Target, record: dict[str, Any]) -> tuple[list[str], str | None]:
    """The job's allocations that started, first to last (the submitted job first, even before it starts), and the
    continuation queued after the last one (Slurm drops it when that one completes)."""
    q = shlex.quote(record["job_dir"])
    started = [j for j in sh.sh(f"cat {q}/{ALLOCATIONS} 2>/dev/null", check=False).split() if j.isdigit()]
    queued = sh.sh(f"cat {q}/{NEXT} 2>/dev/null", check=False).strip()
    return list(dict.fromkeys([record["job_id"], *started])), queued if queued.isdigit() else None


CANCEL_WAIT_SECONDS = 60.0  # for the flow job to stop (it cancels its server job) before its record is read again


def cancel(record: dict[str, Any]) -> str:
    """`eval cancel JOB`: every allocation of the flow job (marked cancelled first, so no continuation goes on), then,
    once they have left the queue, the server jobs the flow recorded (it cancels them itself when it stops, but a
    job it had just submitted may not be in its record yet, and one killed past KillWait cannot)."""
    profile = profiles.load_profile(record["profile"])
    job_id, q = record["job_id"], shlex.quote(record["job_dir"])
    with cluster.login_shell(profile) as sh:
        sh.sh(f"touch {q}/{CANCELLED}", check=False)

        def queued(jobs: list[str]) -> list[str]:
            out = sh.sh(f"squeue -h -o %i -j {','.join(map(shlex.quote, jobs))} 2>/dev/null", check=False)
            return [j for j in out.split() if j in jobs]

        def servers() -> list[str]:
            return [str(s["job_id"]) for s in runs.servers(_read_json(sh, f"{record['job_dir']}/run.json") or {})
                    if s.get("job_id")]

        started, waiting = _allocations(sh, record)
        flow = list(dict.fromkeys([job_id, *started, *([waiting] if waiting else [])]))
        sh.sh("scancel " + " ".join(map(shlex.quote, flow + servers())), check=False)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while queued(flow) and time.monotonic() < deadline:
            time.sleep(1.0)
        served = servers()
        if left := queued(served):
            sh.sh("scancel " + " ".join(map(shlex.quote, left)), check=False)
        states = {j: _state(sh, j) for j in flow + served}
    lines = [f"job {job_id} on {profile.name} (Slurm): cancelled ({states[job_id]})"]
    lines += [f"allocation {j}: cancelled ({states[j]})" for j in flow[1:]]
    lines += [f"server job {j}: cancelled ({states[j]})" for j in served]
    return secrets.mask("\n".join(lines))


def _read_json(sh: cluster.Target, path: str) -> dict[str, Any] | None:
    text = sh.sh(f"cat {shlex.quote(path)} 2>/dev/null", check=False)
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def as_job(cli: Callable[[], int]) -> int:
    """The job's CLI (`python -m nemotron.cli` with NEMOTRON_JOB_DIR set), with Slurm's SIGTERM (scancel, time limit)
    acting as Ctrl-C, so the flow tears its server job down as it does when interrupted."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rc = cli()
    if rc != 130 and (folder := os.environ.get("NEMOTRON_JOB_DIR")):  # ended on its own: no allocation continues it
        Path(folder, FINISHED).write_text(f"{rc}\n")
    return rc
