"""Plan and run benchmarks: one `nemo-evaluator run_eval` subprocess per benchmark.

The harness runs in a subprocess, not in-process: nemo-evaluator's `evaluate()` installs signal
handlers (main thread only) and calls sys.exit. Each run gets its own output folder, telemetry off,
and the offline Hugging Face switches when a pre-populated cache is configured; lm-eval sends straight
to the gate (client mode: no adapter proxy in between, see chat.DIRECT) unless the benchmark has chat
controls (chat.adapter_config).

The subprocess code is ours, not prefect-shell's `ShellOperation` (which the flow uses for the
container squash): prefect-shell 0.3.7 builds every child's environment from `os.environ.copy()`
(`_compile_kwargs`), so the W&B, Prefect and cloud keys of the flow's process would reach the
harness; it gives no stdin pipe to hold (the reaper's parent-death check) and no per-line hook,
where each line must be masked, written to `run_eval.log` and classified, instead of sent whole
into Prefect's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

from nemotron.benchmarks import chat, environments, harness, registry
from nemotron.config import secrets
from nemotron.config.schema import EvalConfig, TaskSpec
from nemotron.errors import BenchmarkError, ConfigError, DiskFull
from nemotron.records import results
from nemotron.records.results import BenchmarkResult, parse_output_dir
from nemotron.serving import engines, gate, runtime
from nemotron.serving.endpoints import Endpoint, free_port, healthy
from nemotron.serving.jobs import log_tail

KILL_GRACE_SECONDS = 10.0
INTERRUPTED_MARKER = ".nemo_evaluator_interrupted"
RESULT_FILE = "nemotron-result.json"  # written last: the benchmark is complete in this folder
# harness params that change how requests are sent, not what is asked or scored: not part of the key
TRANSPORT_PARAMS = ("parallelism", "request_timeout", "max_retries")
HARNESS_PACKAGES = ("nemo-evaluator", "nemo-evaluator-launcher", "nvidia-lm-eval", "vllm")
# what an infrastructure failure leaves in the harness log: the endpoint unreachable, gone, too slow, or 5xx
_INFRASTRUCTURE = re.compile(
    r"ClientConnectorError|ServerDisconnectedError|Cannot connect to host|Connection refused|ConnectionResetError"
    r"|ConnectError|RemoteProtocolError|ReadTimeout|TimeoutError|timed out|ClientResponseError: (5\d\d|429)"
    r"|status_code=(5\d\d|429)|Internal Server Error|Bad Gateway|Service Unavailable|Too Many Requests")
# what a full disk leaves in the harness log (the OS's words, Python's errno, SQLite's)
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|\[Errno (28|122)\]|database or disk is full")
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
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
    key: str = ""  # model identity + task + harness params: the same key means the same results
    max_parallelism: int | None = None  # the user's `parallelism`, a cap; else the whole in-flight budget
    capabilities: tuple[str, ...] = ()  # what the endpoint must support: logprobs, ...
    chat: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # chat.effective: {} = none
    judge: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # evaluation.judge, if it needs one

    @property
    def harness(self) -> str:
        """The registry's harness (framework) name: lm-evaluation-harness, bfcl, ..."""
        return self.task_type.split(".", 1)[0]

    def sending(self, budget: int) -> BenchmarkPlan:
        """This plan with its harness parallelism set for a shared in-flight budget: the whole budget
        (the gate holds the rest back), or the user's cap if lower."""
        parallelism = min(budget, self.max_parallelism or budget)
        return replace(self, params={**self.params, "parallelism": parallelism})

    def judge_endpoint(self, endpoint: Endpoint) -> Endpoint | None:
        """Where this benchmark's judge answers: a served judge on the gate's route `<benchmark>-judge` beside the
        benchmark's own (`endpoint` is the gate's route `<benchmark>`: its requests are counted apart, within the
        judge's share of the budget), a running judge at its URL."""
        if self.judge.get("served"):
            return replace(endpoint, base_url=f"{endpoint.base_url}{gate.JUDGE_ROUTE}")
        return None

    def run_config(self, endpoint: Endpoint) -> dict[str, Any]:
        """The `--run_config` document nemo-evaluator reads."""
        url = endpoint.chat_url if self.endpoint_type == "chat" else endpoint.completions_url
        based = self.harness in environments.BASE_URL
        url = f"{endpoint.base_url}/v1" if based else url
        params = self.params
        if (judge := self.judge_endpoint(endpoint)) is not None:
            params = deep_merge(params, {"extra": {"judge": {
                "url": f"{judge.base_url}/v1" if based else judge.chat_url, "model_id": judge.model_id,
                "api_key_name": judge.api_key_env}}})
        return {
            # no capability probe: it has a fixed 30 s timeout, which a busy server misses (the harness
            # then dies before its first request); the flow checks capabilities once, itself
            "config": {"type": self.task_type, "output_dir": self.output_dir, "params": params,
                       "required_capabilities": []},
            "target": {"api_endpoint": {"url": url, "model_id": endpoint.model_id, "type": self.endpoint_type,
                                        # the variable's name; the harness sends its value as its bearer token
                                        **({"api_key_name": endpoint.api_key_env} if endpoint.api_key_env else {}),
                                        "adapter_config": chat.adapter_config(self.chat, self.output_dir,
                                                                              self.endpoint_type)}},
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


@functools.cache
def harness_versions() -> dict[str, str]:
    """The installed versions of what asks the questions and scores the answers (manifest, result key)."""
    found = {}
    for name in HARNESS_PACKAGES:
        try:
            found[name] = pkg_metadata.version(name)
        except pkg_metadata.PackageNotFoundError:
            continue
    return found


def versions_for(harness: str) -> dict[str, str]:
    """The versions that ask and score a harness's tasks: the project's own for lm-eval, else its environment's."""
    return harness_versions() if harness == environments.IN_PROJECT else environments.pinned(harness)


def suite_versions(plans: list[BenchmarkPlan]) -> dict[str, str]:
    """Every package version that asks and scores this suite's benchmarks (the manifest's `harness`)."""
    found = dict(harness_versions())
    for p in plans:
        found.update(versions_for(p.harness))
    return found


def result_key(model_identity: str, task_type: str, params: dict[str, Any],
               controls: dict[str, Any] | None = None, judge: dict[str, Any] | None = None) -> str:
    """What makes two runs of a benchmark give the same results (transport settings aside): the model, the
    task, its params (a running judge's URL and model among them), its chat controls, a served judge (and what its
    requests are sent with), and the
    harness versions — an upgraded nemo-evaluator, lm-eval or harness package scores anew."""
    asked = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS}
    versions = versions_for(task_type.split(".", 1)[0])
    doc = {"model": model_identity, "task": task_type, "params": asked, "harness": versions}
    if controls:  # absent when there are none: the keys of results made before controls existed still match
        doc["chat"] = controls
    if judge and judge.get("served"):  # the model judges itself: its identity is the key's already
        doc["judge"] = {"served": True, "add_params": judge["add_params"]} if judge.get("add_params") else "served"
    doc = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def plan(
    cfg: EvalConfig, specs: list[TaskSpec], model_path: str, model_identity: str, store: Path,
    hf_home: Path | None, tokenizer: str | None = None,
) -> list[BenchmarkPlan]:
    """Resolve every task against the registry and build its harness config. Raises ConfigError.

    `tokenizer`: where the harness finds the checkpoint's tokenizer when the checkpoint is not on this machine's
    disk (a copy fetched from the cluster); the result key names the checkpoint's own, wherever the copy is.

    Each benchmark's folder is `<store>/<name>-<key>`: a re-run with the same key finds it complete,
    or half done with its answered requests in the harness's response cache."""
    ev = cfg.evaluation
    plans = []
    for spec in specs:
        info = registry.lookup(spec.name)
        environments.check(info.harness, cfg.offline, spec.name, info.harness_task)
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
        controls = _controls(cfg, spec, info)
        judge = _judge(cfg, spec, info, params)
        if judge.get("url"):
            params = deep_merge(params, {"extra": {"judge": {"url": judge["url"], "model_id": judge["model_id"],
                                                             "api_key_name": judge.get("api_key_env")}}})
        if args := chat.lm_eval_args(controls, info.endpoint_type) if info.harness == environments.IN_PROJECT else "":
            extra = params.setdefault("extra", {})
            extra["args"] = f"{extra.get('args') or ''} {args}".strip()
        copy = None
        client_side = info.needs_logprobs or "apply_chat_template" in controls
        if client_side and not params.get("extra", {}).get("tokenizer"):
            # log-likelihood tasks score continuations client-side, and a chat template is rendered there: they need
            # the model's tokenizer
            own = engines.tokenizer(cfg.deployment, model_path)
            params = deep_merge(params, {"extra": {"tokenizer": own, "tokenizer_backend": "huggingface"}})
            copy = tokenizer
        key = result_key(model_identity, info.qualified, params, controls, judge)  # the checkpoint's own tokenizer
        if copy:  # the harness reads the local copy
            params = deep_merge(params, {"extra": {"tokenizer": copy}})
        cap = spec.nemo_evaluator_config.config.params.parallelism or ev.nemo_evaluator_config.config.params.parallelism
        plans.append(BenchmarkPlan(
            name=spec.name, task_type=info.qualified, endpoint_type=info.endpoint_type,
            output_dir=str(store / f"{spec.name}-{key[:12]}"), timeout=spec.timeout or ev.timeout,
            retries=ev.retries if spec.retries is None else spec.retries, params=params, key=key,
            max_parallelism=cap, capabilities=info.capabilities, chat=controls, judge=judge,
        ))
    return plans


def _judge(cfg: EvalConfig, spec: TaskSpec, info: registry.TaskInfo, params: dict[str, Any]) -> dict[str, Any]:
    """The judge a judged task is handed (evaluation.judge); {} for a task that takes none, or whose params name their
    own (extra.judge.url). A judged task with neither is refused: its harness would send to no judge, or to one of
    its defaults' (gpt-4 at OpenAI) with no key."""
    if "judge" not in (info.defaults.get("config", {}).get("params", {}).get("extra") or {}):
        return {}
    judge = cfg.evaluation.judge
    if judge is None:
        if (params.get("extra", {}).get("judge") or {}).get("url"):
            return {}
        raise ConfigError(f"task {spec.name!r} is scored by a judge model and none is set: set "
                          "evaluation.judge.served=true (this run's model judges itself) or evaluation.judge.url, "
                          "model_id and api_key_env (a running judge)")
    if judge.api_key_env:
        if not os.environ.get(judge.api_key_env):
            raise ConfigError(f"evaluation.judge.api_key_env={judge.api_key_env} names a variable that is not set "
                              "here; export it (the judge's key) or drop evaluation.judge.api_key_env")
        secrets.remember(os.environ[judge.api_key_env])
    return judge.model_dump(exclude_none=True, exclude_defaults=True)


def _controls(cfg: EvalConfig, spec: TaskSpec, info: registry.TaskInfo) -> dict[str, Any]:
    """A benchmark's chat controls, refused in one line where its harness cannot apply them."""
    controls = chat.effective(cfg.evaluation.chat, spec.chat)
    if info.endpoint_type == "chat":
        controls.pop("apply_chat_template", None)  # a chat task's prompts are always rendered by the template
    elif info.harness != environments.IN_PROJECT:
        for name in ("system_prompt", "apply_chat_template"):
            if name in controls:
                raise ConfigError(f"task {spec.name!r} sends prompts, not chat messages ({info.harness}): chat.{name} "
                                  "applies to chat tasks and lm-evaluation-harness's; unset it for this task")
    return controls


def finished(bench: BenchmarkPlan) -> BenchmarkResult | None:
    """The recorded result if this exact benchmark (same key) already completed in its folder."""
    path = Path(bench.output_dir) / RESULT_FILE
    try:
        doc = json.loads(path.read_text())
        if doc["key"] != bench.key:
            return None
        found = results.result_from_dict(doc["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return replace(found, reused=True)


def link_into(run_dir: Path, plans: list[BenchmarkPlan]) -> None:
    """`<run_dir>/<name>` → the benchmark's keyed folder, so a run folder shows all it used."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in plans:
        link = run_dir / p.name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(p.output_dir, target_is_directory=True)


def verify_capabilities(plans: list[BenchmarkPlan], endpoint: Endpoint, timeout: float = 300) -> list[str]:
    """nemo-evaluator's capability probe, once per suite and with time for a busy server (its own, per
    harness, gives up after 30 s): one warning per capability the endpoint refuses."""
    payloads = registry.capability_payloads()
    warnings, tried = [], set()
    for p in plans:
        for cap in p.capabilities:
            url = endpoint.chat_url if p.endpoint_type == "chat" else endpoint.completions_url
            if (cap, url) in tried or cap not in payloads:
                continue
            tried.add((cap, url))
            users = [q.name for q in plans if cap in q.capabilities and q.endpoint_type == p.endpoint_type]
            payload = {**payloads[cap], "model": endpoint.model_id}
            try:
                response = httpx.post(url, json=payload, headers=endpoint.headers(), timeout=timeout)
                why = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            if why:
                warnings.append(f"the endpoint refused a {cap} request ({why}); {', '.join(users)} need it "
                                "and will likely fail")
    return warnings


def failure_kind(log: str) -> str:
    """Infrastructure if the harness log shows the endpoint failing it, else configuration: a run that
    fails without touching a broken endpoint fails the same way when tried again."""
    return "infrastructure" if _INFRASTRUCTURE.search(log[-200_000:]) else "configuration"


def retryable(error: BaseException) -> bool:
    """Only infrastructure failures are worth another attempt (a task timeout is one) — and not
    against a server that has died: the flow relaunches it and runs the benchmark again."""
    if isinstance(error, TimeoutError):
        return True
    if isinstance(error, DiskFull) or getattr(error, "kind", None) != "infrastructure":
        return False
    endpoint, key_env = getattr(error, "endpoint", None), getattr(error, "key_env", None)
    return endpoint is None or healthy(endpoint, Endpoint("", "", api_key_env=key_env).headers())


# what a harness needs from the flow's environment; nothing else is inherited (no cloud, Prefect or W&B keys)
_HARNESS_ENV = ("PATH", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SHELL",
                "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NO_PROXY", "no_proxy",
                "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                "OMP_NUM_THREADS", "HF_ENDPOINT",
                "PYTHONPATH")  # a detached job's code is on it (nemotron.benchmarks.reaper)
_HARNESS_ENV_PREFIXES = ("LC_", "XDG_")


def harness_home() -> Path:
    """The harnesses' HOME: a folder of their own, not the user's, so that neither they nor the dataset code they run
    find ~/.netrc (the W&B key, which `requests` sends to a matching host by itself), cloud credentials or keys."""
    home = runtime.home() / "harness-home"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def harness_env(hf_home: Path | None, offline: bool) -> dict[str, str]:
    """Environment for run_eval, built from what it needs: `lm-eval` on PATH (nemotron.benchmarks.harness's, then the
    venv's), telemetry off, a private HOME, the HF cache (the user's, by path) and offline switches, this
    project's folder (lm-eval's task index), and `HF_TOKEN` (gated datasets) when set and the hub is reachable:
    offline, the cache holds everything and the token would be a credential it does not need."""
    env = {k: v for k, v in os.environ.items() if k in _HARNESS_ENV or k.startswith(_HARNESS_ENV_PREFIXES)}
    env["HOME"], env["NEMOTRON_HOME"] = str(harness_home()), str(runtime.home())
    launcher = harness.harness_bin()
    env["PATH"] = os.pathsep.join([*([str(launcher)] if launcher else []), str(Path(sys.executable).parent),
                                   env.get("PATH", os.defpath)])
    env["NEMO_EVALUATOR_TELEMETRY_LEVEL"] = "0"
    if os.environ.get("HF_TOKEN") and not offline:
        env["HF_TOKEN"] = os.environ["HF_TOKEN"]
    env["HF_HOME"] = str(hf_home or _users_hf_home())
    if offline:
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _users_hf_home() -> Path:
    """Where the Hugging Face libraries look here: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else
    ~/.cache/huggingface (the harness's HOME is another folder, so it is given this one by path)."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface"


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """TERM the run's process group (harness, lm-eval), then KILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
            return


async def run_benchmark(
    bench: BenchmarkPlan, endpoint: Endpoint, env: dict[str, str],
    on_line: Callable[[str], None] = lambda line: None, on_output: Callable[[str], None] = lambda line: None,
) -> BenchmarkResult:
    """Run one benchmark to completion. Cancellation (timeout, Ctrl-C) stops its whole process group.
    `on_line` gets the harness's notable lines (errors), `on_output` every line (the progress board)."""
    out = Path(bench.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        result = await _run(bench, endpoint, env, on_line, on_output, out)
        results.write_atomic(out / RESULT_FILE,
                             json.dumps({"key": bench.key, "result": asdict(result)}, indent=2) + "\n")
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_full(bench.name, e.filename or str(out), os.strerror(e.errno)) from None
        raise
    return result


def disk_full(benchmark: str, path: str, said: str) -> DiskFull:
    """The failure of a benchmark that could not write to `path`: whose disk, and what to do."""
    return DiskFull(f"{benchmark}: the disk holding {path} is full ({said}): free space there, or point "
                    "evaluation.output_dir at another disk, and run again (finished benchmarks are reused)", path)


LOCK_FILE = ".lock"
CLAIM_POLL_SECONDS = 2.0


@contextlib.contextmanager
def claimed(plans: list[BenchmarkPlan], say: Callable[[str], None]) -> Iterator[None]:
    """Hold every benchmark folder of `plans` for this evaluation, waiting while another holds one.

    Two runs of the same evaluation (a trigger and a deployment run for one model version, two users)
    must not serve twice or mix their caches and results: the second waits here, before serving, and
    then finds the first one's results complete. The locks are taken in folder order (no deadlock
    between overlapping suites) and released when the process ends, however it ends."""
    with contextlib.ExitStack() as stack:
        for p in sorted(plans, key=lambda p: p.output_dir):
            out = Path(p.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context((out / LOCK_FILE).open("w"))
            told = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        say(f"{p.name}: another evaluation is running it into {out} (same model, task and config); "
                            "waiting for it, to reuse its result")
                        told = True
                    time.sleep(CLAIM_POLL_SECONDS)
        yield


LONGEST_LINE = 1 << 20


async def lines(stream: asyncio.StreamReader, longest: int = LONGEST_LINE) -> AsyncIterator[bytes]:
    """The stream's lines, a line longer than `longest` bytes in pieces of that size: a harness may print a whole
    response on one line, and the StreamReader's own line reading raises past 64 KiB (which ended the harness)."""
    pending = b""
    while chunk := await stream.read(1 << 16):
        pending += chunk
        *done, pending = pending.split(b"\n")
        for line in done:
            yield line + b"\n"
        while len(pending) >= longest:
            yield pending[:longest]
            pending = pending[longest:]
    if pending:
        yield pending


async def _run(bench: BenchmarkPlan, endpoint: Endpoint, env: dict[str, str], on_line: Callable[[str], None],
               on_output: Callable[[str], None], out: Path) -> BenchmarkResult:
    (out / INTERRUPTED_MARKER).unlink(missing_ok=True)
    run_config = bench.run_config(endpoint)
    environments.prepare_output(bench.harness, out, run_config)
    cfg_text = yaml.safe_dump(run_config, sort_keys=False)
    results.write_atomic(out / "nemotron_run_config.yml", secrets.mask(cfg_text))
    with _config_for_the_harness(cfg_text, out) as cfg_path:
        return await _run_harness(bench, endpoint, env, on_line, on_output, out, cfg_path)


@contextlib.contextmanager
def _config_for_the_harness(text: str, out: Path) -> Iterator[Path]:
    """The harness's config file. One whose values hold a secret (a parameter read from `${oc.env:...}`) is a private
    file outside the results, removed after the run, and what the harness copied of it into its output is masked;
    the results keep the masked copy (nemotron_run_config.yml)."""
    if not secrets.contains_secret(text):
        yield out / "nemotron_run_config.yml"
        return
    private = runtime.home() / "private"
    private.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, path = tempfile.mkstemp(dir=private, suffix=".yml")  # mode 600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        yield Path(path)
    finally:
        Path(path).unlink(missing_ok=True)
        secrets.scrub_tree(out)


async def _run_harness(bench: BenchmarkPlan, endpoint: Endpoint, env: dict[str, str],
                       on_line: Callable[[str], None], on_output: Callable[[str], None], out: Path,
                       cfg_path: Path) -> BenchmarkResult:
    log_path = out / "run_eval.log"
    start = time.monotonic()
    offset = log_path.stat().st_size if log_path.exists() else 0  # earlier attempts' lines are not this one's
    with log_path.open("ab") as log:
        shown = {k: v for k, v in env.items() if k.startswith(("HF_", "NEMO_EVALUATOR_"))}
        log.write(secrets.mask(f"# nemotron: run_eval {cfg_path} at {time.time():.3f} with {shown}\n").encode())
        # the reaper (stdin: a pipe only this process holds) kills the harness's group if this process dies
        programs = environments.bin_dir(bench.harness)
        if programs is None:  # lm-eval, in the project's environment
            evaluator = [sys.executable, "-m", "nemotron.benchmarks.harness", "nemo-evaluator"]
        else:  # its own environment's nemo-evaluator, and its programs first on PATH
            evaluator = [str(programs / "nemo-evaluator")]
            env = {**env, "PATH": os.pathsep.join([str(programs), env.get("PATH", os.defpath)])}
        if key_env := bench.judge.get("api_key_env"):  # a running judge's key, by the name the harness is given
            env = {**env, key_env: os.environ.get(key_env, "")}
        if chat.through_adapter(bench.chat, bench.endpoint_type):
            # a port of its own: nemo-evaluator's search from 3825 races with the other benchmarks' adapters
            env = {**env, "ADAPTER_PORT": str(free_port())}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nemotron.benchmarks.reaper", *evaluator,
            "run_eval", "--run_config", str(cfg_path), env=env, cwd=out,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            async for raw in lines(proc.stdout):
                raw = secrets.mask(raw.decode(errors="replace")).encode()
                log.write(raw)
                line = raw.decode(errors="replace").rstrip()
                on_output(line)
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
        with log_path.open("rb") as f:
            f.seek(offset)
            said = f.read().decode(errors="replace")
        if not interrupted and (full := _DISK_FULL.search(said[-200_000:])):
            raise disk_full(bench.name, str(out), full.group(0))
        kind = "infrastructure" if interrupted else failure_kind(said)
        why = "was interrupted" if interrupted else f"exited with code {rc}"
        raise BenchmarkError(f"{bench.name}: nemo-evaluator {why} after {seconds:.0f} s ({kind} failure); "
                             f"output {out}, log {log_path}; last lines:\n{log_tail(log_path, 20)}", kind,
                             endpoint.health_url, endpoint.api_key_env)
    try:
        scores = parse_output_dir(bench.name, out)
    except ValueError as e:
        raise BenchmarkError(f"{bench.name}: {e} (model failure: the run ended without scores); log {log_path}",
                             "model") from None
    return BenchmarkResult(bench.name, "completed", str(out), seconds, scores)
