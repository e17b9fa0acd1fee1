"""Plan and run benchmarks: one `nemo-evaluator run_eval` subprocess per benchmark.

The harness runs in a subprocess, not in-process: nemo-evaluator's `evaluate()` installs signal
handlers (main thread only) and calls sys.exit. Each run gets its own output folder and adapter
port (its proxy binds 127.0.0.1:3825+, and the free-port probe races), telemetry off, and the
offline Hugging Face switches when a pre-populated cache is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from nemotron import registry
from nemotron.config import EvalConfig, TaskSpec
from nemotron.errors import BenchmarkError, ConfigError
from nemotron.results import BenchmarkResult, parse_output_dir
from nemotron.serving import Endpoint, free_port, log_tail

KILL_GRACE_SECONDS = 10.0
INTERRUPTED_MARKER = ".nemo_evaluator_interrupted"
# harness lines worth surfacing in the run log (the full output is in <output_dir>/run_eval.log)
_NOTABLE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback \(most recent|^\s*\w*(Error|Exception):")


@dataclass(frozen=True)
class BenchmarkPlan:
    """One benchmark, ready to run against any endpoint."""

    name: str  # as the user wrote it: adlr_mmlu
    task_type: str  # registry-qualified: lm-evaluation-harness.adlr_mmlu
    endpoint_type: str  # completions | chat
    output_dir: str
    timeout: float
    retries: int
    params: dict[str, Any] = field(hash=False, compare=False)

    def run_config(self, endpoint: Endpoint) -> dict[str, Any]:
        """The `--run_config` document nemo-evaluator reads."""
        url = endpoint.chat_url if self.endpoint_type == "chat" else endpoint.completions_url
        return {
            "config": {"type": self.task_type, "output_dir": self.output_dir, "params": self.params},
            "target": {"api_endpoint": {"url": url, "model_id": endpoint.model_id, "type": self.endpoint_type}},
        }


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def select_tasks(cfg: EvalConfig, names: list[str] | None) -> list[TaskSpec]:
    """`-t` picks tasks: the config's entry when it has one, else a plain registry task."""
    if not names:
        return list(cfg.evaluation.tasks)
    configured = {t.name: t for t in cfg.evaluation.tasks}
    return [configured.get(n) or TaskSpec(name=n) for n in dict.fromkeys(names)]


def plan(
    cfg: EvalConfig, specs: list[TaskSpec], model_path: str, run_dir: Path, hf_home: Path | None
) -> list[BenchmarkPlan]:
    """Resolve every task against the registry and build its harness config. Raises ConfigError."""
    ev = cfg.evaluation
    plans = []
    for spec in specs:
        info = registry.lookup(spec.name)
        if cfg.offline and hf_home is not None:
            missing = registry.missing_offline(info.harness_task, hf_home)
            if missing:
                raise ConfigError(
                    f"task {spec.name!r} needs dataset {', '.join(missing)}, which is not in the offline "
                    f"Hugging Face cache {hf_home}; add it to the cache, or drop the task "
                    f"(evaluation.hf_offline=false if the hub is reachable)")
        params = deep_merge(info.defaults.get("config", {}).get("params", {}),
                            ev.nemo_evaluator_config.config.params.model_dump(exclude_none=True))
        params = deep_merge(params, spec.nemo_evaluator_config.config.params.model_dump(exclude_none=True))
        if info.needs_logprobs and not params.get("extra", {}).get("tokenizer"):
            # log-likelihood tasks score continuations client-side: they need the model's tokenizer
            params = deep_merge(params, {"extra": {"tokenizer": model_path, "tokenizer_backend": "huggingface"}})
        plans.append(BenchmarkPlan(
            name=spec.name, task_type=info.qualified, endpoint_type=info.endpoint_type,
            output_dir=str(run_dir / spec.name), timeout=spec.timeout or ev.timeout,
            retries=ev.retries if spec.retries is None else spec.retries, params=params,
        ))
    return plans


def harness_env(hf_home: Path | None, offline: bool) -> dict[str, str]:
    """Environment for run_eval: `lm-eval` on PATH, telemetry off, the HF cache and offline switches."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NEMO_EVALUATOR_TELEMETRY_LEVEL"] = "0"
    env.pop("HF_DATASETS_CACHE", None)  # it would override $HF_HOME/datasets
    env.pop("WANDB_API_KEY", None)  # the harness never needs it; keep it out of its logs and dumps
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    if offline:
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """TERM the run's process group (harness, lm-eval, adapter), then KILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
            return


async def run_benchmark(
    bench: BenchmarkPlan, endpoint: Endpoint, env: dict[str, str],
    on_line: Callable[[str], None] = lambda line: None,
) -> BenchmarkResult:
    """Run one benchmark to completion. Cancellation (timeout, Ctrl-C) stops its whole process group."""
    out = Path(bench.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INTERRUPTED_MARKER).unlink(missing_ok=True)
    cfg_path = out / "nemotron_run_config.yml"
    cfg_path.write_text(yaml.safe_dump(bench.run_config(endpoint), sort_keys=False))
    log_path = out / "run_eval.log"
    exe = str(Path(sys.executable).parent / "nemo-evaluator")
    env = {**env, "ADAPTER_PORT": str(free_port())}  # fresh per attempt: a used port stays busy ~60 s
    start = time.monotonic()
    with log_path.open("ab") as log:
        shown = {k: v for k, v in env.items() if k.startswith(("HF_", "ADAPTER_", "NEMO_EVALUATOR_"))}
        log.write(f"# nemotron: run_eval {cfg_path} with {shown}\n".encode())
        proc = await asyncio.create_subprocess_exec(
            exe, "run_eval", "--run_config", str(cfg_path), env=env, cwd=out,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip()
                if _NOTABLE.search(line) and "trust_remote_code" not in line:  # datasets>=4: harmless
                    on_line(line[:500])
            rc = await proc.wait()
        except BaseException:
            # a timeout or cancel cancels every await in this scope: shield the cleanup
            with anyio.CancelScope(shield=True):
                await _stop_group(proc)
            raise
    seconds = time.monotonic() - start
    interrupted = (out / INTERRUPTED_MARKER).exists()
    if rc != 0 or interrupted:
        why = "was interrupted" if interrupted else f"exited with code {rc}"
        raise BenchmarkError(f"{bench.name}: nemo-evaluator {why} after {seconds:.0f} s; "
                             f"output {out}, log {log_path}; last lines:\n{log_tail(log_path, 20)}")
    try:
        scores = parse_output_dir(bench.name, out)
    except ValueError as e:
        raise BenchmarkError(f"{bench.name}: {e}; log {log_path}") from None
    return BenchmarkResult(bench.name, "completed", str(out), seconds, scores)
