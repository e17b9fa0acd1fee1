"""The nano3 evaluation flow: serve the model once, map one task per benchmark, record the scores.

Reads like the picture in DESIGN.md; every step is one call into a domain module (`nemotron.*`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

import httpx
from prefect import flow, get_client, get_run_logger, tags, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.futures import as_completed
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_shell import ShellOperation

from nemotron.benchmarks import environments, progress, runner, sizing
from nemotron.benchmarks.runner import BenchmarkPlan
from nemotron.config import models, profiles, secrets
from nemotron.config.profiles import Profile
from nemotron.config.request import ConfigName, ConfigPath, EvalRequest, ModelReference, Override, ProfileName, TaskName
from nemotron.config.schema import validate
from nemotron.errors import ConfigError, DiskFull, PrefectUnreachable
from nemotron.records import baseline, results, runs, wandb_export
from nemotron.records.results import BenchmarkResult, Previous, SuiteResult
from nemotron.serving import cluster, engines, gate, jobs, relaunch, replicas, runtime
from nemotron.serving.endpoints import Endpoint


def retry_if_infrastructure(task, task_run, state) -> bool:
    """Prefect's retry condition: only infrastructure failures get another attempt."""
    return isinstance(state.data, BaseException) and runner.retryable(state.data)


@task(task_run_name="{bench.name}", tags=["benchmark"], retry_condition_fn=retry_if_infrastructure,
      cache_policy=NO_CACHE)  # results are reused by their benchmark folder's key, not by Prefect
async def run_benchmark(bench: BenchmarkPlan, endpoint: Endpoint, env: dict[str, str],
                        board: progress.Board) -> BenchmarkResult:
    """One `nemo-evaluator run_eval` against the shared endpoint (retries and timeout from config)."""
    log = get_run_logger()
    log.info("running %s (%s) into %s", bench.name, bench.task_type, bench.output_dir)
    board.start(bench.name)
    with secrets.scrubbed():  # a failure's text becomes the task's state message: no secret in it
        result = await runner.run_benchmark(bench, endpoint, env, on_line=log.warning,
                                                on_output=functools.partial(board.read, bench.name))
    for s in result.scores:
        log.info("%s %s = %.4f ± %s (n=%s)", s.benchmark, s.metric, s.value, s.stderr, s.samples)
    return result


@task(task_run_name="{result.benchmark}", tags=["benchmark", "reused"])
def reuse_benchmark(result: BenchmarkResult) -> BenchmarkResult:
    """A benchmark an earlier run completed with the same key: its recorded result, nothing sent."""
    get_run_logger().info("%s: complete in %s (same model, task and harness config): reusing its result",
                          result.benchmark, result.output_dir)
    return result


@task(task_run_name="squash {image}", tags=["squash"])
def squash_image(image: str, profile: Profile, force: bool) -> str:
    """`enroot import` of the server's container image to its `.sqsh` on the cluster (on a compute node, through
    salloc), once: prefect-shell streams its output into this run's logs, and its exit code is this task's state."""
    path, command = cluster.squash_step(profile, image, force)
    get_run_logger().info("[squash] %s to %s%s", image, path, " (--force-squash)" if force else ", unless it is there")
    unset = secrets.secret_env_names()  # `srun --export=ALL` would hand them to the import job
    with secrets.scrubbed():
        ShellOperation(commands=[*([f"unset {' '.join(unset)}"] if unset else []), command]).run()
    return path


@flow(name="wandb-export", flow_run_name="wandb-export-{suite.model}", log_prints=True)
def export_to_wandb(suite: SuiteResult, manifest: dict) -> dict | None:
    """One W&B run for the evaluation: model artifact as input, scores, table, results artifact.
    The config comes from the manifest, secrets masked: a subflow's parameters are stored by Prefect."""
    log = get_run_logger()
    config = validate(manifest["config"])
    where, skipped = wandb_export.target(config)
    if where is None:
        log.info(skipped)
        return None
    with secrets.scrubbed():
        record = wandb_export.export_within(config.export.timeout, suite, manifest, config, where)
    log.info("W&B: %s", wandb_export.describe(record))
    return record


CANCEL_POLL_SECONDS = 3.0
MAX_WORKERS = 16  # threads; how many benchmarks run at once is evaluation.max_parallel


def cancel_server_job(flow, run, state) -> None:
    """Cancellation/crash hook: the process may be gone, so cancel the job it recorded. A crash
    that `stop_when_cancelled` caused is what the user asked for: record it as Cancelled."""
    record = runs.load(str(run.id)) or {}
    for server in runs.servers(record):
        jobs.cancel_recorded(server)
    if record.get("cancel_requested") and state is not None and state.is_crashed():
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelled(message="Cancelled through the Prefect API; "
                                                                 "the server job was cancelled."), force=True)


@contextlib.contextmanager
def stop_when_cancelled(run_id: str) -> Iterator[None]:
    """An attached run (the CLI's `--run`) has no runner to act on a cancel from the UI or API:
    watch for it and interrupt the flow like Ctrl-C, so the server job is torn down at once."""
    if os.environ.get("PREFECT__FLOW_RUN_ID"):  # started by a runner or worker: it stops the process itself
        yield
        return
    done = threading.Event()
    # A signal of its own that raises KeyboardInterrupt, as Ctrl-C does (even mid-syscall): SIGINT itself is
    # ignored in a CLI started in the background of a script (`nemotron ... &`), so it could not stop that run.
    interrupt = signal.SIGUSR1 if threading.current_thread() is threading.main_thread() else signal.SIGINT
    previous = signal.signal(interrupt, signal.default_int_handler) if interrupt == signal.SIGUSR1 else None

    def watch() -> None:
        with get_client(sync_client=True) as client:
            while not done.wait(CANCEL_POLL_SECONDS):
                with contextlib.suppress(Exception):
                    state = client.read_flow_run(UUID(run_id)).state
                    if state is not None and (state.is_cancelling() or state.is_cancelled()):
                        runs.save(run_id, cancel_requested=True)
                        os.kill(os.getpid(), interrupt)
                        return

    threading.Thread(target=watch, name="cancel-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        if previous is not None:
            signal.signal(interrupt, previous)


def _trusted() -> bool:
    """Started from the CLI on the user's own machine; a deployment run (UI, API, trigger) is not."""
    return deployment.id is None


def _run_name() -> str:
    """`eval-<model>`: the model the request resolves to (its `model`, else the config's run.model)."""
    params = flow_run.parameters
    try:
        return f"eval-{models.parse(EvalRequest(**params).load(_trusted())).ref}"
    except Exception:  # noqa: BLE001 - a bad request fails in the flow, with its message
        return f"eval-{params.get('model') or 'invalid-request'}"


@flow(name="nano3-eval", flow_run_name=_run_name, log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),
      on_cancellation=[cancel_server_job], on_crashed=[cancel_server_job])
def nano3_eval(model: ModelReference | None = None, tasks: list[TaskName] | None = None,
               config: ConfigName | ConfigPath = "default", profile: ProfileName | None = None,
               overrides: list[Override] | None = None, force_squash: bool = False) -> SuiteResult:
    """Evaluate one model on the configured benchmarks, serving it once for the whole suite.

    `config` + `overrides` (+ `model`, applied last) make the evaluation config, as on the CLI;
    `profile` names an env.toml profile: the server runs there (Slurm), the benchmarks run here.
    """
    secrets.mask_logging()  # console and Prefect's API: no secret value leaves in a log line
    with secrets.scrubbed():  # an exception's text becomes the run's state message, its traceback a log line
        try:
            return evaluate(model, tasks, config, profile, overrides, force_squash)
        except OSError as e:
            if e.errno not in runner.DISK_ERRNOS:
                raise
            # every record is written whole or not at all: the last complete one stands
            message = (f"the disk holding {e.filename} is full ({os.strerror(e.errno)}): the run stopped; finished "
                       "benchmarks are complete in their folders and reused by the next run: free space there, or "
                       "point evaluation.output_dir at another disk, and run again")
            get_run_logger().error("%s", message)
            return Failed(message=secrets.mask(message))


def evaluate(model: str | None, tasks: list[str] | None, config: str, profile: str | None,
             overrides: list[str] | None, force_squash: bool) -> SuiteResult:
    """The steps of `nano3_eval`, in its flow run."""
    log = get_run_logger()
    say = log.info
    request = EvalRequest(model=model, tasks=tasks, config=config, profile=profile, overrides=overrides or [],
                          force_squash=force_squash)
    runtime.raise_open_files()  # the gate holds two descriptors per request in flight

    # 1. the config (a deployment run's overrides are data: checked), the model resolved (W&B artifacts: here)
    try:
        cfg = request.load(trusted=_trusted())
        profile = profile or cfg.run.profile  # a run that names none serves where the config (the worker) says
        where = profiles.load_profile(profile) if profile else None
        secrets.remember_config([cfg.model_dump(mode="json"), where.model_dump() if where else None])
        secrets.remember(engines.api_key(cfg.deployment))  # a running endpoint's key: masked wherever it appears
        model = models.resolve(models.parse(cfg), say, local=not cluster.is_slurm(where), offline=cfg.offline,
                               hf_home=cfg.evaluation.hf_home)
        tokenizer = None
        on_cluster_disk = cluster.is_remote(where) and engines.launches(cfg.deployment) and model.kind != "hf"
        if on_cluster_disk:  # the checkpoint is measured there, its tokenizer copied here
            tree, tokenizer = cluster.remote_checkpoint(
                where, model.path, engines.tokenizer(cfg.deployment, model.path), say)
            model = replace(model, tree=tree)
        serving_record = jobs.serving_record(cfg.deployment, cluster.image_for(cfg.deployment, where), where)
        # an engine nobody can name before launching: this run's results get a key of their own (never reused)
        unpinned = jobs.unpinned(serving_record, force_squash)
        identity = engines.identity(model.identity, {**serving_record, **({"run": str(flow_run.id)} if unpinned
                                                                          else {})})
    except ConfigError as e:  # bad input or no such artifact: not a crash (the CLI exits 2)
        log.error("%s", e)
        return Failed(message=secrets.mask(str(e)), data=e)
    ev = cfg.evaluation
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = str(flow_run.id)
    # two runs of one model may start in the same second (a trigger and a user): the run id keeps them apart
    run_dir = Path(os.path.expanduser(ev.output_dir)).resolve() / model.slug / f"{stamp}-{run_id[:8]}"
    hf_home = runtime.writable_hf_home(Path(ev.hf_home), say) if ev.hf_home else None
    runs.save(run_id, name=flow_run.name, run_dir=str(run_dir), model=model.ref, profile=profile,
              started=stamp)
    add_tags(run_id, model.tags)

    # 2. plan: registry lookup, harness configs, offline data check; what an earlier run already finished
    store = Path(os.path.expanduser(ev.output_dir)).resolve() / "benchmarks"
    plans = runner.plan(cfg, runner.select_tasks(cfg, tasks), model.path, identity, store, hf_home,
                            tokenizer)
    runner.link_into(run_dir, plans)
    runs.save(run_id, benchmarks=[p.name for p in plans])  # eval status lists the ones not started yet too
    eval_id = wandb_export.evaluation_id(identity, [
        {"name": p.name, "task": p.task_type, "params": p.params} for p in plans])
    say(f"evaluating {model.ref} ({model.path}) on {', '.join(p.name for p in plans)}; results in {run_dir}")
    if unpinned:
        say(f"[reuse] {unpinned}: this run's results are scored anew and never reused (pin the engine: "
            "deployment.venv, or an image file the cluster has)")
    board = progress.Board.of([p.name for p in plans])
    shown = ProgressArtifacts([p.name for p in plans])

    # 3. hold the benchmark folders: a second run of the same evaluation (a trigger and a deployment run for one
    #    version) waits here, before serving, then reuses what the first one finished
    env = runner.harness_env(hf_home, cfg.offline)
    with runner.claimed(plans, say), progress.watch(board, say, on_tick=shown.update):
        outcomes: dict[str, BenchmarkResult] = {}
        with tags(*model.tags):
            for p in plans:
                if (done := runner.finished(p)) is not None:
                    outcomes[p.name] = reuse_benchmark(done)
                    board.finish(p.name, progress.REUSED)
        todo = [p for p in plans if p.name not in outcomes]
        try:  # before serving: a harness environment that cannot be built costs no model load
            environments.build_all({p.harness for p in todo}, say)
        except ConfigError as e:
            log.error("%s", e)
            return Failed(message=secrets.mask(str(e)), data=e)
        size_in_background(board, todo, env)
        facts = {"evaluation_id": eval_id, "flow_run_id": run_id, "model": model.record(),
                 "harness": runner.suite_versions(plans), "serving": serving_record, "profile": profile,
                 "config": secrets.masked(cfg.model_dump(mode="json")),
                 "benchmarks": {p.name: {"output_dir": p.output_dir, "key": p.key, "reused": p.name in outcomes}
                                for p in plans}}

        # 4. serve once, map the missing benchmarks over the endpoint; relaunch a server that dies
        manifest = results.write_manifest(run_dir, facts)
        if not todo:
            say("every benchmark already has its result for this model and config: nothing to serve")
        dep, image = cfg.deployment, cluster.image_for(cfg.deployment, where)
        if todo and image and not cluster.is_squashed(image):
            try:
                dep = dep.model_copy(update={"image": squash_image(image, where, force_squash)})
            except Exception as e:  # noqa: BLE001 - its output is in the squash task's logs
                return Failed(message=secrets.mask(f"importing the container image {image} failed: {e}"))
        launch = functools.partial(jobs.serve, dep, model.path, run_dir, profile=where,
                                   detached=deployment.id is not None,  # a deployment run is a batch run
                                   on_record=lambda job: runs.save_server(run_id, job), revision=model.serve_revision,
                                   offline=cfg.offline or model.kind != "hf")
        provisional = gate.provisional_budget(ev.in_flight, dep.replicas * dep.data_parallel_size)
        served = Endpoint("", dep.served_model_name, api_key_env=dep.api_key_env)  # the gate routes to it by name
        never_healthy = None
        for attempt in relaunch.launches(todo, outcomes, dep.max_restarts, say, log.error):
            sent: dict[str, BenchmarkPlan] = {}
            with stop_when_cancelled(run_id), tags(*model.tags), \
                    replicas.serve(launch, dep.replicas, say, dep.max_restarts, dep.health_interval,
                                   dep.hang_timeout) as fleet, \
                    gate.open_gate(None, headers=served.headers(),
                                   keep=run_dir / "requests" if ev.keep_requests else None,
                                   judged=any(p.judge.get("served") for p in attempt.todo),
                                   judge_in_flight=ev.judge.in_flight if ev.judge else None,
                                   judge_params=ev.judge.add_params if ev.judge else None) as g:
                board.counting(g.answered)  # the board counts this launch's answers
                fleet.wait_loading()  # while the job waits in the queue nothing starts; once it runs, harnesses do
                fleet.open_when_ready(g, functools.partial(server_budget, todo=attempt.todo, configured=ev.in_flight,
                                                           say=say, warn=log.warning))
                try:
                    attempt.lost = run_benchmarks(attempt.todo, served, g, env, ev, fleet.died, fleet.alive, outcomes,
                                                  board, lambda: fleet.budget or provisional, sent)
                finally:
                    gate.append_record(run_dir, {"launch": attempt.number, **g.record()})
                if fleet.error is not None:  # never healthy: its harnesses have ended on the gate's refusals
                    never_healthy = relaunch.never_came_up(fleet.error, attempt.todo, outcomes, log.error)
                    break
                server = fleet.first
                if server is not None:  # the gate opened (every harness may have failed before: no server record)
                    manifest = results.write_manifest(run_dir, {**facts, "server": {
                        "command": server.job.spec.command if server.job else None, "launches": attempt.number,
                        "endpoint": server.endpoint.base_url, "replicas": fleet.opened_to,
                        "model_id": server.endpoint.model_id, "in_flight_budget": fleet.budget,
                        "engine_version": fleet.engine_version,
                        "run_configs": {name: p.run_config(g.route(served, name)) for name, p in sent.items()}}})

        # 5. record: summary files, the comparison and the gate, Prefect artifacts
        suite = SuiteResult(model.ref, str(run_dir), tuple(outcomes[p.name] for p in plans))
        summary = results.write_summary(suite)
        api = str(get_client(sync_client=True).api_url).rstrip("/")
        if not api_answers(api, cfg.run.api_wait, log.warning):
            message = (f"the Prefect API at {api} did not answer for "
                       f"run.api_wait={cfg.run.api_wait:g} s after the benchmarks ended: the results are in "
                       f"{summary} and scores.md beside it; the score artifacts, the comparison"
                       f"{' and its gate' if ev.gate else ''} and the W&B export are not done (export to W&B "
                       f"with `nemotron nano3 eval export {run_id}` once it answers)")
            runs.save(run_id, error=message)
            api_gone_quietly()
            raise PrefectUnreachable(message)
        label = model.resolved or model.ref
        scores_key = results.artifact_key(model.series, "scores")
        try:
            previous, lookup_failed = evaluation_of(scores_key, other_than=model.version), None
        except Exception as e:  # noqa: BLE001 - the scores stand without a change column; a gate fails on it
            log.warning("no comparison with the previous evaluation: its look-up failed: %s", e)
            previous, lookup_failed = None, f"the look-up of the previous evaluation failed: {e}"
        changes = baseline.changes_against(previous, run_dir, log.warning)
        gated = baseline.judge(ev.gate, previous, changes, cfg, run_dir, log.warning, lookup_failed,
                               look_up=lambda key, version: evaluation_of(key, version=version))
        tripped = gated.reasons() if gated is not None and gated.verdict != "pass" else []
        create_table_artifact(results.score_rows(suite), key=scores_key, description=f"Scores of {label}")
        create_markdown_artifact(results.render_markdown(
            suite, previous, series=model.series, version=label,
            changes={(c.benchmark, c.metric): c.cell() for c in changes} if changes is not None else None)
            + (gated.markdown() if gated is not None else ""),
            key=results.artifact_key(model.series, "summary"),
            description=f"Evaluation of {label}")
        say(f"results: {summary} (score table: artifact {scores_key})")
        if tripped:  # a run that did not pass is never a baseline (evaluation_of skips these tags)
            add_tags(run_id, [gated.verdict])
            (log.error if gated.failed else log.warning)("%s against %s: %s", gated.verdict, gated.baseline,
                                                         "; ".join(tripped))
        manifest = results.write_manifest(run_dir, {
            **manifest, "regression": tripped, "verdict": gated.verdict if gated else None,
            "gate": gated.record() if gated else None,
            "comparison": {"previous": previous.model if previous else None,
                           "changes": [c.record() for c in changes or []]}})

    # 6. the W&B export, once the benchmark folders are released: a slow or unreachable W&B holds no other
    #    evaluation of them back
    exported = export_to_wandb(suite, manifest, return_state=True)
    export_failed = None
    if exported.is_completed():
        record = exported.result()
        runs.save(run_id, wandb=wandb_export.describe(record) if record else "not exported (not configured)")
    else:
        export_failed = (f"W&B export failed: {exported.message}; the results are safe in {run_dir}; export "
                         f"them again with `nemotron nano3 eval export {run_id}`")
        runs.save(run_id, wandb=f"export failed: {exported.message}")
        log.error("%s", export_failed)

    # what is missing, each in its own words: the run fails on any of it (an unexported run has no lineage)
    missing = []
    if suite.failed:
        missing.append((f"{never_healthy}; " if never_healthy else "")
                       + f"{len(suite.failed)}/{len(plans)} benchmarks failed: {', '.join(suite.failed)}; "
                       f"the others are recorded in {summary}")
    if gated is not None and gated.failed:
        missing.append(f"{gated.verdict} against {gated.baseline}: {'; '.join(tripped)}; the scores are recorded in "
                       f"{summary}")
    if export_failed:
        missing.append(export_failed)
    return Failed(message=" | ".join(missing), data=suite) if missing else suite


API_PROBE_SECONDS = 5.0


def api_answers(url: str, seconds: float, warn) -> bool:
    """The Prefect API at `url` answers (any answer but a 5xx: a server that wants credentials is up) now or within
    `seconds`. Step 5 records through it, and while it is down each of its calls would stall for a minute of
    Prefect's own retries and then crash the run."""
    deadline = time.monotonic() + seconds
    for look in itertools.count():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=API_PROBE_SECONDS).status_code < 500:
                return True
        if time.monotonic() >= deadline:
            return False
        if look == 0:
            warn(f"the Prefect API at {url} does not answer: waiting up to {seconds:g} s to record the results there")
        time.sleep(API_PROBE_SECONDS)


class _MessageOnly(logging.Filter):
    """The engine's report of PrefectUnreachable: its message (the CLI prints it), not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PrefectUnreachable):
            record.exc_info, record.exc_text = None, None
        return True


def api_gone_quietly() -> None:
    """The API is gone for good: each batch its log handler cannot send is not news (the stdlib prints it while
    `logging.raiseExceptions`), and the run's failure is said once, in its own words."""
    logging.raiseExceptions = False
    logging.getLogger("prefect.flow_runs").addFilter(_MessageOnly())


def size_in_background(board: progress.Board, todo: list[BenchmarkPlan], env: dict[str, str]) -> None:
    """The board's totals before the harnesses report theirs (the dry run's count: lm-eval loads for ~10 s the
    first time, so not in the way of the launch)."""
    def run() -> None:
        for name, size in sizing.count({p.name: p.params for p in todo}, env, nice=True,
                                       harnesses={p.name: p.harness for p in todo}).items():
            board.plan(name, size.requests)

    threading.Thread(target=run, name="sizing", daemon=True).start()


class ProgressArtifacts:
    """The board in Prefect: the suite's progress artifact and one per benchmark, each described by its figures
    (`1,204/40,168 requests answered · 12.3 req/s · ETA 54m10s`). Created in the flow (they belong to its run),
    updated from the board's thread."""

    def __init__(self, names: list[str]) -> None:
        self.suite = create_progress_artifact(0.0, key=progress.artifact_key(), description="starting")
        self.ids = {n: create_progress_artifact(0.0, key=progress.artifact_key(n), description="waiting")
                    for n in names}
        self.shown: dict[str, str] = {}

    def update(self, rows: list[progress.Row], suite: progress.Row) -> None:
        for uuid, row in [(self.suite, suite), *((self.ids[r.name], r) for r in rows)]:
            figures = f"{row.percent:.1f} {row.describe()}"
            if self.shown.get(row.name) != figures:
                update_progress_artifact(uuid, row.percent, description=row.describe())
                self.shown[row.name] = figures


def add_tags(run_id: str, extra: list[str]) -> None:
    """Tag the flow run with the model it evaluates, once that is known (W&B: after the look-up)."""
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(UUID(run_id)).tags
        client.update_flow_run(UUID(run_id), tags=[*current, *(t for t in extra if t not in current)])


LOOKUP_PAGE = 50


def evaluation_of(scores_key: str, other_than: str | None = None, version: str | None = None) -> Previous | None:
    """The newest evaluation under this key that `baseline.accepted` takes, with its flow run and, when this machine
    has it, its results folder; None if there is none, however many score tables lie between. A failed look-up
    raises: the caller says what it costs (a missing change column, or a gate that cannot look)."""
    with get_client(sync_client=True) as client:
        for offset in itertools.count(0, LOOKUP_PAGE):
            tables = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[scores_key])),
                                           sort=ArtifactSort.CREATED_DESC, limit=LOOKUP_PAGE, offset=offset)
            for art in tables:
                if art.flow_run_id is None:
                    continue
                run = client.read_flow_run(art.flow_run_id)
                model = next((t.split(":", 1)[1] for t in run.tags if t.startswith("model:")), run.name)
                if not baseline.accepted(model, bool(run.state and run.state.is_completed()), run.tags, other_than,
                                         version):
                    continue
                rows = json.loads(art.data) if isinstance(art.data, str) else art.data
                when = (run.start_time or art.created).strftime("%Y-%m-%d %H:%M UTC")
                folder = (runs.load(str(run.id)) or {}).get("run_dir")
                return Previous(model=model, run_name=run.name, when=when, rows=tuple(rows),
                                run_dir=folder if folder and Path(folder, "results.json").is_file() else None)
            if len(tables) < LOOKUP_PAGE:
                return None


def server_budget(fleet: replicas.Fleet, todo: list[BenchmarkPlan], configured: int | None, say, warn) -> int:
    """Once the servers are healthy: the capability check, and the in-flight budget the gate opens with."""
    server = fleet.handle
    for warning in runner.verify_capabilities(todo, server.endpoint):
        warn("%s", warning)
    budget, source = gate.budget_for(list(fleet.urls().values()), configured, server.endpoint.headers())
    say(f"[serve] in-flight budget: {budget} requests at once, shared by the benchmarks (from {source})")
    return budget


def run_benchmarks(todo: list[BenchmarkPlan], endpoint: Endpoint, through: gate.Gate, env: dict[str, str], ev,
                   died: threading.Event, alive: Callable[[], bool], outcomes: dict[str, BenchmarkResult],
                   board: progress.Board, budget: Callable[[], int],
                   sent: dict[str, BenchmarkPlan]) -> dict[str, BenchmarkResult]:
    """At most `evaluation.max_parallel` benchmarks at a time, their requests through the gate's
    shared in-flight budget (a sliding window of harnesses, one window of requests); the first ones start
    while the model loads, with the `budget()` known then. Each plan as sent goes into `sent`.
    Returns the benchmarks its death cost — failed on the connection or never started — with the
    failure to record if it is not relaunched; every other outcome goes into `outcomes`."""
    waiting, running, lost = list(todo), {}, {}
    started = time.monotonic()
    stopped: str | None = None  # why no further benchmark starts (a full disk)
    while waiting or running:
        while waiting and len(running) < ev.max_parallel and not died.is_set() and stopped is None:
            p = waiting.pop(0).sending(budget())
            sent[p.name] = p
            attempt = run_benchmark.with_options(retries=p.retries, retry_delay_seconds=ev.retry_delay,
                                                 timeout_seconds=p.timeout)
            running[attempt.submit(p, through.route(endpoint, p.name), {**env, **through.harness_env()}, board)] = p
        if not running:
            break
        future = next(as_completed(list(running)))
        bench = running.pop(future)
        outcome, error = _outcome(future, bench, time.monotonic() - started)
        if isinstance(error, DiskFull) and stopped is None:
            stopped = str(error).splitlines()[0]
            get_run_logger().error("%s: no further benchmark starts", stopped)
        if outcome.failure == "infrastructure" and not isinstance(error, DiskFull) and (died.is_set() or not alive()):
            died.set()
            lost[bench.name] = outcome
            board.finish(bench.name, progress.WAITING)  # for the relaunched server
        else:
            outcomes[bench.name] = outcome
            board.finish(bench.name, progress.DONE if outcome.status == "completed" else progress.FAILED)
    for p in waiting:
        not_started = BenchmarkResult(p.name, "failed", p.output_dir, 0.0, failure="infrastructure", attempts=0,
                                      error=f"not started: {stopped}" if stopped else "not started: the server died")
        if stopped:  # the suite stopped: recorded, not run again on a relaunch
            outcomes[p.name] = not_started
            board.finish(p.name, progress.FAILED)
        else:  # the server was gone: run on the relaunched one
            lost[p.name] = not_started
    return lost


def _outcome(future, bench: BenchmarkPlan, seconds: float) -> tuple[BenchmarkResult, BaseException | None]:
    """A finished future as a result record, and its failure (None if it completed); a failure keeps its error
    text and kind."""
    try:
        return future.result(), None
    except BaseException as e:  # noqa: BLE001 - the failure is the record
        failure = getattr(e, "kind", "infrastructure" if isinstance(e, TimeoutError) else "configuration")
        with get_client(sync_client=True) as client:
            attempts = client.read_task_run(future.task_run_id).run_count
        return BenchmarkResult(bench.name, "failed", bench.output_dir, seconds, error=f"{type(e).__name__}: {e}",
                               failure=failure, attempts=attempts), e

