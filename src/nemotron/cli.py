"""`nemotron nano3 eval`: evaluate a checkpoint on the benchmark suite.

Validation happens before anything starts: a bad key, task or value is one line on stderr and
exit 2. `--dry-run` prints the resolved config and the plan and imports neither Prefect nor NeMo-Run.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from nemotron import preview
from nemotron.benchmarks import environments, runner
from nemotron.config import models, profiles, secrets
from nemotron.config.request import EvalRequest
from nemotron.config.schema import RunSection, load_config, slurm_seconds, validate
from nemotron.errors import ConfigError, NemotronError, PrefectUnreachable
from nemotron.records import compare, wandb_export
from nemotron.serving import cluster, engines, jobs, runtime

MONITOR_COMMANDS = ("status", "logs", "export", "compare", "cancel")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    root = _Parser(prog="nemotron", description="Nemotron training pipeline CLI.")
    family = root.add_subparsers(dest="family", required=True, parser_class=_Parser)
    nano3 = family.add_parser("nano3", help="Nemotron nano3 recipe stages.")
    stage = nano3.add_subparsers(dest="stage", required=True, parser_class=_Parser)

    ev = stage.add_parser("eval", help="Evaluate a model on standard benchmarks.",
                          description="Serve the model once with vLLM, run each benchmark with "
                          "nemo-evaluator as a Prefect task, and record the scores.",
                          epilog="run.model: rl:latest | sft:latest | pretrain:latest | rl:v2 | "
                          "entity/project/name:alias | a checkpoint path.  Finished runs: "
                          "`eval status [RUN]`, `eval logs [RUN]`, `eval export [RUN]` (to W&B again), "
                          "`eval cancel RUN` (a run or a --batch job, and its servers), "
                          "`eval compare BEFORE AFTER` (two runs or results folders).")
    ev.add_argument("-c", "--config", default="default", help="config name in config/ or a YAML path")
    ev.add_argument("-t", "--task", action="append", metavar="NAME", help="run only these task(s); repeatable")
    ev.add_argument("-d", "--dry-run", action="store_true", help="print the resolved config and plan; start nothing")
    ev.add_argument("--count", action="store_true", help="with --dry-run: count each benchmark's requests now, with "
                    "lm-eval on the data (about 10 s a benchmark; kept in the request-count cache)")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("-r", "--run", metavar="PROFILE", help="submit to a cluster profile from env.toml (attached)")
    mode.add_argument("-b", "--batch", metavar="PROFILE", help="submit to a cluster profile (detached)")
    ev.add_argument("--force-squash", action="store_true", help="re-import the container image to .sqsh")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    setup_cmd = stage.add_parser("setup", help="Install the local vLLM (CPU) serving venv and the built-in model.")
    setup_cmd.add_argument("--harness", action="append", metavar="NAME", default=[],
                       help="also build this harness's environment (repeatable; `all` for every one)")
    return root


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Overrides may stand before, between and after the options (`eval run.model=X -t gsm8k a.b=Y`), as
    users mix them; they apply in the order written."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or getattr(args, "stage", None) != "eval"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    secrets.mask_uncaught()
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        if words[:3] == ["nano3", "eval", "compare"]:  # its own options (--rule), not the evaluation's
            return compare_runs(words[3:])
        args = parse(argv)
        if args.stage == "setup":
            return setup(args.harness)
        return evaluate(args)
    except NemotronError as e:
        print(secrets.mask(f"error: {e}"), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def setup(harnesses: list[str]) -> int:
    """The serving venv and the built-in model; with --harness, harness environments (checked first: a bad name
    builds nothing)."""
    named = environments.named(harnesses)
    python = runtime.ensure_serve_venv()
    model = runtime.ensure_builtin_model("smollm2-135m-instruct")
    print(f"serving venv: {python.parent.parent}\nbuilt-in model: {model}")
    for harness in named:
        print(f"{harness} environment: {environments.build(harness)}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    if args.overrides and args.overrides[0] in MONITOR_COMMANDS:
        return monitor(args.overrides[0], args.overrides[1:])
    name = args.run or args.batch
    # --batch: a Prefect deployment takes the run if there is one (its worker resolves the profile from its own
    # env.toml, and the run is checked as anything arriving through Prefect is); else it goes to the cluster itself
    route = batch_route() if args.batch and not args.dry_run else None
    to_prefect = route is not None and route.deployment
    if to_prefect:  # refused here as the worker would refuse it, before resolving
        cfg = EvalRequest.checked(config=args.config, overrides=args.overrides).load(trusted=False)
    else:
        cfg = load_config(args.config, args.overrides)
    profile = profiles.load_profile(name or cfg.run.profile) if (name or cfg.run.profile) and not to_prefect else None
    secrets.remember_config([cfg.model_dump(mode="json"), profile.model_dump() if profile else None])
    if args.force_squash and not cluster.image_for(cfg.deployment, profile) and not to_prefect:
        raise ConfigError("--force-squash re-imports a container image on a cluster; it needs --run PROFILE with a "
                          "Slurm profile and deployment.image (or the profile's container_image)")
    cluster.check_resources(cfg.deployment, profile)
    if not to_prefect:  # a running endpoint's key must be here (with --batch to Prefect, it is the worker's)
        secrets.remember(engines.api_key(cfg.deployment))
    model = models.parse(cfg)  # syntax only: W&B artifacts are looked up in the flow
    # the offline data check is where the harnesses run: here, unless --batch sends them elsewhere
    hf_home = Path(os.path.expanduser(cfg.evaluation.hf_home)) if cfg.evaluation.hf_home and not args.batch else None
    store = Path(os.path.expanduser(cfg.evaluation.output_dir)).resolve() / "benchmarks"
    served = jobs.serving_record(cfg.deployment, cluster.image_for(cfg.deployment, profile))
    plans = runner.plan(cfg, runner.select_tasks(cfg, args.task), model.path or f"<{model.ref}>",
                        engines.identity(model.identity, served), store, hf_home)
    if args.count and not args.dry_run:
        raise ConfigError("--count goes with --dry-run: a run counts each benchmark's requests as it starts")
    if args.dry_run:
        text = preview.render(cfg, model, plans, served, profile, args.force_squash,
                              preview.sizes(cfg, plans, args.count))
        if args.batch and cluster.is_slurm(profile) and profile.remote_job_dir:
            from nemotron.serving import detached

            request = _request(args, name, secrets.hidden_overrides(args.overrides))
            given = detached.secrets_for(request, profile, cfg.deployment.api_key_env)
            text += ("\n# detached flow job script (--batch when no Prefect deployment takes the run; secrets come "
                     "from a private file)\n" + detached.job_script(
                         request, profile, detached.environment_dir(profile), "<private file>", None, None,
                         detached.continuation(slurm_seconds(cfg.run.flow_time or cluster.FLOW_TIME_DEFAULT),
                                               slurm_seconds(cfg.run.max_walltime))) + "\n"
                     + f"# secrets the job gets through that file: {', '.join(sorted(given)) or 'none'}\n")
        print(secrets.mask(text))
        return 0
    if to_prefect:
        return submit_batch(_request(args, name, args.overrides))
    if args.batch:
        return submit_detached(_request(args, name, secrets.hidden_overrides(args.overrides)), profile, route,
                               cfg.evaluation.output_dir, cfg.deployment.api_key_env, cfg.run)
    wandb_export.detect_login()
    # the flow runs here; its parameters (stored by Prefect) keep references to secret values, not the values,
    # and what reads this process's command line (W&B records it as run metadata) sees them masked
    request = _request(args, name, secrets.hidden_overrides(args.overrides))
    sys.argv[1:] = [secrets.mask(a) for a in sys.argv[1:]]
    return run_flow(request)


def _request(args: argparse.Namespace, profile: str | None, overrides: list[str]) -> EvalRequest:
    return EvalRequest.checked(tasks=args.task, config=args.config, profile=profile, overrides=overrides,
                               force_squash=args.force_squash)


def monitor(command: str, rest: list[str]) -> int:
    """`eval status|logs|export [RUN]`: RUN is a flow run id (or its prefix) or name; default: latest.
    `eval compare A B`: two evaluations (runs or results folders), B against A."""
    if command == "compare":
        return compare_runs(rest)
    if len(rest) > 1:
        raise ConfigError(f"usage: nemotron nano3 eval {command} [RUN]; got extra arguments: {' '.join(rest[1:])}")
    if command == "cancel" and not rest:
        raise ConfigError("usage: nemotron nano3 eval cancel RUN (a flow run id, id prefix or name, or a Slurm job id "
                          "that --batch submitted); cancelling is never done to the latest run by default")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if command == "export":
        return export_again(rest[0] if rest else None)
    from nemotron.serving import detached

    if rest and (job := detached.load(rest[0])) is not None:  # a Slurm job id that `--batch` submitted itself
        print(detached.cancel(job) if command == "cancel" else detached.report(job, logs=command == "logs"))
        return 0
    from flows import status

    if command == "cancel":
        print(status.cancel(rest[0]))
        return 0

    # what the run logged went through the redactor; a server log read over the tunnel and this machine's
    # secrets that run never knew have not
    print(secrets.mask(status.report(rest[0] if rest else None, logs=command == "logs")))
    return 0


def compare_runs(words: list[str]) -> int:
    """`eval compare BEFORE AFTER [--rule METRIC=MAX_DROP ...]`: the table, and with rules the gate's verdict per
    metric (exit 1 when it would fail a run: a regression, inconclusive, or nothing it could look at)."""
    parser = _Parser(prog="nemotron nano3 eval compare")
    parser.add_argument("refs", nargs="*")
    parser.add_argument("--rule", action="append", default=[], type=_rule)
    args = parser.parse_intermixed_args(words)
    if len(args.refs) != 2:
        raise ConfigError(f"usage: nemotron nano3 eval compare BEFORE AFTER [--rule METRIC=MAX_DROP ...] (each a run "
                          f"id, run name or results folder); got {len(args.refs)} argument(s)")
    before, after = (compare.load(compare.results_folder(ref)) for ref in args.refs)
    changes = compare.compare(before, after)
    print(compare.render(before, after, changes))
    if not args.rule:
        return 0
    outcome = compare.gate(changes, args.rule, before.label, "inconclusive")
    print("\n" + outcome.text())
    return 1 if outcome.failed else 0


def _rule(value: str) -> compare.Rule:
    metric, eq, margin = value.rpartition("=")
    try:
        drop = float(margin)
    except ValueError:
        drop = -1.0
    if not eq or not metric or drop < 0:
        raise ConfigError(f"--rule {value!r}: give METRIC=MAX_DROP, e.g. --rule acc=0.01 or --rule '*=0.02' "
                          "(MAX_DROP a number ≥ 0)")
    return compare.Rule(metric, drop)


def run_flow(request: EvalRequest) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # 20 s is tight on 2 cores
    os.environ.setdefault("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")
    # a W&B service of the process that started this one (a notebook, a test runner) is not ours: the export
    # starts its own, instead of attaching to a service whose life and console are another process's
    os.environ.pop("WANDB_SERVICE", None)
    from flows.eval import nano3_eval
    from nemotron.records import results

    try:
        state = nano3_eval(**request.model_dump(), return_state=True)
    except Exception as e:
        if (unreachable := _unreachable(e)) is not None:  # its words, not the engine's failed report of them
            raise unreachable from None
        raise
    suite = state.result(raise_on_failure=False)
    if isinstance(suite, ConfigError):  # found in the flow before anything started, e.g. a missing artifact
        raise suite
    if isinstance(suite, results.SuiteResult):
        print(f"\n{results.render_table(suite)}\n\nresults written to {suite.run_dir}")
    if not state.is_completed():
        print(f"error: evaluation {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    return 0


DEPLOYMENT = "nano3-eval/nano3-eval"  # prefect.yaml
START_SERVER = ("start one with `prefect server start`, point at it with `prefect config set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api`, then from the repository root `prefect work-pool create "
                "nemotron-eval --type process`, `prefect --no-prompt deploy --all` and `prefect worker start --pool "
                "nemotron-eval`")


@dataclass(frozen=True)
class BatchRoute:
    """Where `--batch` hands the run: a Prefect deployment, else the cluster itself (with the reason)."""

    deployment: bool
    api: str | None  # a Prefect API that answered: a detached job reports there too
    reason: str = ""


def batch_route() -> BatchRoute:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import httpx
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return BatchRoute(False, None, "no Prefect server is configured (PREFECT_API_URL is unset)")
    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployment_by_name(DEPLOYMENT)
            client.read_work_pool(found.work_pool_name)
    except ObjectNotFound:
        return BatchRoute(False, api, f"no deployment {DEPLOYMENT} with its work pool on {api}")
    except httpx.HTTPStatusError as e:  # it answered, with an error: not "no server" (nothing goes to the cluster)
        raise answered(api, e.response) from None
    except (httpx.HTTPError, OSError, RuntimeError) as e:
        return BatchRoute(False, None, f"the Prefect server at {api} does not answer ({type(e).__name__})")
    return BatchRoute(True, api)


def answered(api: str, response) -> NemotronError:
    """A Prefect API that answers with an error stops `--batch`: a 4xx (a key refused, a forbidden workspace) is
    the user's to fix (exit 2), a 5xx the server's (exit 1). Falling back to the cluster would ship this machine's
    secrets around a server the team set up to hold them."""
    cls = ConfigError if response.status_code < 500 else NemotronError
    return cls(f"the Prefect API at {api} answered {response.status_code} {response.reason_phrase} to "
               f"{response.request.method} {response.request.url.path}; nothing was submitted (check "
               "PREFECT_API_URL and PREFECT_API_KEY)")


def submit_batch(request: EvalRequest) -> int:
    """`--batch` with a Prefect deployment: a flow run of it, picked up by a worker; returns at once."""
    import httpx
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    api = PREFECT_API_URL.value()
    try:
        run = run_deployment(DEPLOYMENT, parameters=request.model_dump(exclude_none=True), timeout=0)
    except httpx.HTTPStatusError as e:
        raise answered(api, e.response) from None
    except (httpx.HTTPError, OSError) as e:
        raise ConfigError(f"cannot reach the Prefect server at {api} ({e}); {START_SERVER}") from None
    ui = PREFECT_UI_URL.value() or api.removesuffix("/api")
    print(f"submitted {run.name} ({run.id}) to the Prefect deployment {DEPLOYMENT}; a worker of pool nemotron-eval "
          f"runs it\n{ui}/runs/flow-run/{run.id}\n"
          + (f"profile {request.profile!r} is resolved on the worker, from its env.toml; if the worker has no such "
             "profile the run fails there at once, and `eval status` says so\n" if request.profile else "")
          + f"follow it: nemotron nano3 eval status {run.id}   (or: nemotron nano3 eval logs {run.id})")
    return 0


def submit_detached(request: EvalRequest, profile: profiles.Profile, route: BatchRoute, output_dir: str,
                    api_key_env: str | None, run: RunSection) -> int:
    """`--batch` without a Prefect deployment: the evaluation itself as a Slurm job in the cluster; returns at once."""
    from nemotron.serving import detached

    print(f"{route.reason}: the evaluation goes to the cluster itself, as a Slurm job")
    given = detached.secrets_for(request, profile, api_key_env)
    print(f"secrets it gets, through a private file: {', '.join(sorted(given)) or 'none'}")
    job = detached.submit(request, profile, route.api, output_dir, given, flow_time=run.flow_time,
                          max_walltime=run.max_walltime)
    print(f"submitted Slurm job {job.job_id} on {profile.name}: the flow runs there, serves through the profile "
          f"(its own server job) and runs the benchmarks next to the checkpoint\n"
          f"environment: {job.environment} ({'built now' if job.built else 'reused'})\n"
          f"job folder: {job.job_dir}\nresults: under {job.output_dir} on the cluster\n"
          + (f"reports to the Prefect API at {route.api}\n" if route.api else "")
          + f"follow it: nemotron nano3 eval status {job.job_id}   (or: nemotron nano3 eval logs {job.job_id})\n"
          f"each allocation: {job.flow_time} (run.flow_time); a suite that needs longer continues in a new one, "
          f"up to {run.max_walltime} in all (run.max_walltime)\n"
          f"stop it: nemotron nano3 eval cancel {job.job_id}   (the job, later allocations and its server jobs)")
    return 0


def _unreachable(error: BaseException | None) -> PrefectUnreachable | None:
    """The PrefectUnreachable the flow raised, behind the error of the engine that could not report it."""
    while error is not None and not isinstance(error, PrefectUnreachable):
        error = error.__cause__ or error.__context__
    return error


def export_again(ref: str | None) -> int:
    """Export a finished evaluation to W&B again (e.g. online after an offline run): same W&B run."""
    from flows.eval import export_to_wandb
    from nemotron.records import results, runs

    record = runs.find(ref)
    run_dir = Path(record["run_dir"])
    try:
        manifest = results.read_json(run_dir / "manifest.json")
        suite = results.read_summary(run_dir / "results.json")
    except OSError as e:
        raise ConfigError(f"run {record.get('name')} ({record['flow_run_id']}) has no finished results to export: "
                          f"{e}") from None
    wandb_export.detect_login()
    cfg = validate(manifest["config"])
    where, skipped = wandb_export.target(cfg)
    if where is None:
        raise ConfigError(skipped.replace("W&B export skipped: ", "cannot export: "))
    state = export_to_wandb(suite, manifest, return_state=True)
    if not state.is_completed():
        print(f"error: W&B export {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if os.environ.get("NEMOTRON_JOB_DIR"):  # the detached job's script (serving/detached.py) runs the CLI
        from nemotron.serving import detached

        sys.exit(detached.as_job(main))
    sys.exit(main())
