"""The dry run: what a run would do, before anything starts — the resolved config (secrets masked), the server
and where it runs, each benchmark's harness config and size in requests, the gate's reach, the W&B target, and on a
cluster the job NeMo-Run would submit. It loads no harness and writes nothing (sizes: the request-count cache)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from nemotron.benchmarks import environments, runner, sizing
from nemotron.config import models, profiles, secrets
from nemotron.config.schema import EvalConfig
from nemotron.errors import ConfigError
from nemotron.records import compare, wandb_export
from nemotron.serving import cluster, endpoints, engines, jobs, runtime


def _without_parallelism(run_config: dict) -> dict:
    """The harness's parallelism is set at run time from the in-flight budget: not shown as a number."""
    run_config["config"]["params"] = {k: v for k, v in run_config["config"]["params"].items() if k != "parallelism"}
    return run_config


def render(cfg: EvalConfig, model: models.ModelRef, plans: list[runner.BenchmarkPlan],
                served: dict[str, str], profile: profiles.Profile | None = None, force_squash: bool = False,
                sizes: dict[str, sizing.Size] | None = None) -> str:
    model_path = model.path or f"<{model.ref}>"
    dep = cfg.deployment
    if engines.launches(dep):
        spec = jobs.server_spec(dep, model_path)
        endpoint = endpoints.Endpoint("http://<node>:<port>", spec.model_id, spec.health_path)
        server = {"engine": dep.type, "where": f"{profile.name} (Slurm, tunnel {profile.tunnel})"
                  if cluster.is_slurm(profile) else "this machine (NeMo-Run LocalExecutor)",
                  "command": spec.command, "health": spec.health_path,
                  "env": {**spec.env, **{k: secrets.MASK for k in spec.secret_env}},
                  "port": spec.port or "any free port on the node", "startup_timeout": spec.startup_timeout,
                  "replicas": dep.replicas if dep.replicas == 1 else f"{dep.replicas} jobs like the one below, "
                  "requests spread over them by the gate"}
    else:
        endpoint = endpoints.of_running(dep)
        server = {"engine": "none", "where": f"the running endpoint {endpoint.base_url}: nothing is launched or "
                  "stopped", "health": endpoint.health_url,
                  "api_key": f"${dep.api_key_env} as a bearer token" if dep.api_key_env else None}
    doc = {
        "config": secrets.masked(cfg.model_dump(mode="json", exclude_none=True)),
        "plan": {
            "model": {"ref": model.ref, "kind": model.kind, **(
                {"artifact": model.artifact, "checkpoint_path": "resolved in the flow through the W&B API"}
                if model.kind == "wandb" else {"checkpoint_path": model.path})},
            "server": server,
            "in_flight": cfg.evaluation.in_flight or "sized from the server's KV cache once it is up",
            "benchmarks": [{"name": p.name, "harness": f"{p.harness} in {environments.state(p.harness)}",
                            **({"size": sizes[p.name].describe()} if sizes else {}),
                            **({"chat": p.chat} if p.chat else {}),
                            **({"judge": "this run's served model, on the gate's route <name>-judge"
                                if p.judge.get("served") else p.judge} if p.judge else {}),
                            "timeout": p.timeout, "retries": p.retries,
                            "parallelism": p.max_parallelism or "the in-flight budget",
                            "run_config": _without_parallelism(p.run_config(endpoint))} for p in plans],
            "benchmark_folders": "<output_dir>/benchmarks/<name>-<key>: the key is the model's identity, what "
                                 "serves it (engine, version, numerics flags), the task, its harness params and chat "
                                 "controls; a folder that holds a result is reused, not recomputed"
                                 + (" (W&B: the identity is the artifact digest, known after the look-up; the keys "
                                    "above are placeholders)" if model.kind == "wandb" else ""),
            "offline_hf_cache": cfg.evaluation.hf_home if cfg.offline else None,
            "wandb_export": export_plan(cfg),
        },
    }
    warnings: list[str] = []
    if cfg.evaluation.gate is not None:
        detectable, warnings = gate_plan(cfg.evaluation.gate, plans, sizes)
        doc["plan"]["gate"] = {"baseline": cfg.evaluation.gate.baseline, "fail_on": cfg.evaluation.gate.fail_on,
                               "detectable": detectable}
    # the flow reads a venv or an image file on the cluster's disk there; the dry run does not look
    on_cluster = (cluster.is_remote(profile) and dep.venv not in (None, "managed")) or "image" in served
    if engines.launches(dep) and not on_cluster and (unpinned := jobs.unpinned(served)):
        warnings.append(f"{unpinned}: this run's results are scored anew and never reused")
    text = "# dry run: nothing was started\n" + "".join(f"# warning: {w}\n" for w in warnings)
    if sizes:
        suite = sizing.total(sizes)
        text += ("# requests: " + " · ".join(f"{n} {s.requests:,}" if s.requests is not None else f"{n} unknown"
                                             for n, s in sizes.items())
                 + f" · suite {suite.describe()}\n")
    text += yaml.safe_dump(doc, sort_keys=False, width=10_000)
    if profile is not None and engines.launches(dep):  # NeMo-Run's own rendering of the job (imports NeMo-Run: ~3 s)
        job = jobs.preview(cfg.deployment, model_path, profile, force_squash)
        if "squash" in job:
            when = "always: --force-squash" if force_squash else "if missing"
            text += f"\n# container squash (on the cluster, {when})\n"
            text += job["squash"] + "\n"
        if "sbatch" in job:
            text += "\n# sbatch script NeMo-Run would submit\n" + job["sbatch"].rstrip() + "\n"
        text += "\n# server job script (scripts/server.sh in the job directory)\n" + job["job_script"] + "\n"
    return secrets.mask(text)


def gate_plan(gate_cfg, plans: list[runner.BenchmarkPlan], sizes: dict[str, sizing.Size] | None
              ) -> tuple[dict[str, str], list[str]]:
    """What the gate can detect per benchmark (compare.detectable_plan), at the baseline's scores when it is a
    results folder or run on this machine (a model version is looked up only when the flow runs)."""
    scores = None
    try:
        baseline = compare.load(compare.results_folder(gate_cfg.baseline))
        # per benchmark, its metric nearest 0.5: the worst case among them
        scores = {name: min(b.scores.values(), key=lambda v: abs(v - 0.5)) for name, b in baseline.benchmarks.items()
                  if b.scores}
    except ConfigError:
        pass
    documents = {p.name: sizes[p.name].documents if sizes else None for p in plans}
    return compare.detectable_plan(compare.rules_of(gate_cfg), documents, scores)


def sizes(cfg: EvalConfig, plans: list[runner.BenchmarkPlan], count: bool) -> dict[str, sizing.Size]:
    """Each benchmark's documents and requests, as lm-eval counted them on this machine's datasets: from the
    request-count cache, and with `count` (--count) by lm-eval now for the missing ones. Without it the dry run
    loads nothing: lm-eval and the datasets take seconds per benchmark, a minute when the hub does not answer."""
    named, harnesses = {p.name: p.params for p in plans}, {p.name: p.harness for p in plans}
    if not count:
        return sizing.count(named, {}, counting=False, harnesses=harnesses)
    hf_home = Path(os.path.expanduser(cfg.evaluation.hf_home)) if cfg.evaluation.hf_home else None
    if hf_home is not None and hf_home.is_dir():  # the view a first run makes of a read-only cache, made quietly
        hf_home = runtime.writable_hf_home(hf_home, say=lambda m: None)
    return sizing.count(named, runner.harness_env(hf_home, cfg.offline), harnesses=harnesses)


def export_plan(cfg: EvalConfig) -> str:
    where, skipped = wandb_export.target(cfg)
    if where is None:
        return skipped
    return (f"one run in {where.entity + '/' if where.entity else ''}{where.project}"
            + (" (offline)" if where.offline else ""))
