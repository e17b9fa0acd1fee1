"""The evaluation config: YAML files + `key=value` overrides, validated into one pydantic tree.

Loaded with OmegaConf (interpolations such as `${run.wandb.entity}`, `${oc.env:HF_HOME,null}`),
then validated with `extra="forbid"` so that a typo is an error naming the closest valid key.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nemotron.config.profiles import wandb_settings
from nemotron.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"

if not OmegaConf.has_resolver("cpu_range"):
    OmegaConf.register_new_resolver("cpu_range", lambda: f"0-{(os.cpu_count() or 1) - 1}")


# The artifact names the training stages log their checkpoints under (Nemotron's wandb_kit).
STAGE_ARTIFACTS = {"pretrain": "nano3-pretrain-model", "sft": "nano3-sft-model", "rl": "nano3-rl-model"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WandbRef(Strict):
    entity: str | None = Field(None, description="W&B entity (team or user).")
    project: str | None = Field(None, description="W&B project.")


_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_seconds(text: str) -> int:
    """Slurm's time syntax (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; ValueError otherwise."""
    m = _SLURM_TIME.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:  # HH:MM:SS
        return int(a) * 3600 + int(b) * 60 + int(c)
    return int(a) * 60 + int(b or 0)  # MM[:SS]


class RunSection(Strict):
    model: str = Field(
        "rl:latest",
        description="What to evaluate: a stage alias (rl:latest, sft:latest, pretrain:latest, rl:v2), "
        "a W&B artifact entity/project/name:alias, builtin:NAME, or a checkpoint path.",
    )
    wandb: WandbRef = Field(default_factory=WandbRef, description="Where model artifacts live; default: env.toml "
                            "[wandb], then $WANDB_ENTITY / $WANDB_PROJECT.")
    artifacts: dict[str, str] = Field(
        default_factory=lambda: dict(STAGE_ARTIFACTS),
        description="Stage alias → model artifact name: run.model=rl:v2 means <artifacts.rl>:v2.",
    )
    profile: str | None = Field(
        None, description="The env.toml profile of runs that name none (no --run; a deployment run or a W&B trigger "
        "without a profile parameter): the model is served there. null = this machine.")
    flow_time: str | None = Field(
        None, description="Slurm walltime of each allocation of a detached (--batch) flow job; null: the batch "
        "partition's maximum, at most a day. A suite that needs longer continues in a new allocation.")
    max_walltime: str = Field(
        "7-00:00:00", description="The most a detached suite may take over all its allocations (Slurm time): no "
        "allocation starts past it.")
    api_wait: float = Field(
        600, gt=0, description="Seconds a run whose benchmarks have ended waits for a Prefect API that does not "
        "answer before it fails, its results on disk: the score artifacts, comparison and W&B export need the API.")

    @field_validator("flow_time", "max_walltime")
    @classmethod
    def _slurm_time(cls, value: str | None) -> str | None:
        if value is not None:
            slurm_seconds(value)
        return value


class DeploymentSection(Strict):
    type: Literal["vllm", "sglang", "generic", "none"] = Field(
        "vllm", description="Serving engine: vllm, sglang, generic (a command template), none (a running endpoint).")
    checkpoint_path: str | None = Field(None, description="Serve this path; skips model resolution.")
    served_model_name: str = Field("nano3", description="Model id the endpoint answers to.")
    command: str | None = Field(
        None, description="Server entry point; args are appended (null: `vllm serve`, `python -m "
        "sglang.launch_server`). generic: the whole command, with {checkpoint}, {port}, {served_model_name}, {host}, "
        "{tensor_parallel_size}, {data_parallel_size}.")
    health_path: str | None = Field(None, description="The path that answers 200 once the server is ready "
                                    "(null: /health; /v1/models for type none).")
    tokenizer: str | None = Field(None, description="The checkpoint's tokenizer, if not the checkpoint itself: a "
                                  "template, e.g. {checkpoint}/tokenizer (Megatron).")
    url: str | None = Field(None, description="type none: the running server's base URL, e.g. http://host:8000.")
    api_key_env: str | None = Field(None, description="type none: the variable holding the endpoint's key (sent as "
                                    "a bearer token, never logged).")
    venv: str | None = Field(
        None, description="A venv whose bin/ leads the server's PATH; 'managed' = the project's CPU venv."
    )
    host: str = Field("0.0.0.0", description="Interface the server binds.")
    port: int = Field(0, ge=0, le=65535, description="Server port; 0 picks a free one on the node.")
    tensor_parallel_size: int = Field(4, ge=1, description="GPUs per model replica.")
    data_parallel_size: int = Field(1, ge=1, description="Model replicas.")
    extra_args: str = Field("", description="Appended verbatim to the server command.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the server.")
    startup_timeout: float = Field(1800, gt=0, description="Seconds from job start until /health must answer.")
    queue_timeout: float | None = Field(
        None, gt=0, description="Seconds the server job may wait in the queue before the run gives up and cancels "
        "it; null = no bound (the log says the job's state and Slurm's reason every minute).")
    state_timeout: float = Field(
        120, gt=0, description="Seconds the job's state may stay unreadable (accounting down, tunnel broken) before "
        "the run gives up and cancels it.")
    image: str | None = Field(None, description="Container image for the server on Slurm (pyxis); "
                              "default: the profile's container_image. A .sqsh path is used as is.")
    heartbeat_timeout: float = Field(
        300, ge=10, description="The server job stops itself when the submitting flow has been silent this long."
    )
    replicas: int = Field(
        1, ge=1, description="Servers of the model (Slurm jobs through the profile, or local processes); the gate "
        "spreads requests over them and the budget is the sum of their capacities.")
    max_restarts: int = Field(
        2, ge=0, description="Relaunches of a server that died mid-suite: of one replica in place while another "
        "serves; else of the whole set, whose unfinished benchmarks run again.")
    health_interval: float = Field(
        5, gt=0, description="Seconds between /health checks while benchmarks run; a server that refuses connections "
        "(or fails requests) for 3 intervals has died.")
    hang_timeout: float = Field(
        600, gt=0, description="Seconds a server may answer nothing while requests wait on it (or while its health "
        "check answers nothing) before it is judged hung: relaunched, its requests sent again.")

    @model_validator(mode="after")
    def _engine_keys(self) -> DeploymentSection:
        from nemotron.serving import engines

        engines.check(self)
        return self


class HarnessParams(Strict):
    """nemo-evaluator `config.params`: one vocabulary across harnesses."""

    limit_samples: int | float | None = Field(None, description="Samples per (sub)task; None = all.")
    max_new_tokens: int | None = Field(None, ge=1, description="Generation length cap.")
    max_retries: int | None = Field(None, ge=0, description="Retries per request.")
    parallelism: int | None = Field(
        None, ge=1, description="Cap on one benchmark's concurrent requests; None = the whole in-flight budget.")
    task: str | None = Field(None, description="Harness task name (normally from the registry).")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling.")
    request_timeout: int | None = Field(None, ge=1, description="Seconds per request.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Harness-specific parameters.")


class HarnessSection(Strict):
    params: HarnessParams = Field(default_factory=HarnessParams)


class NemoEvaluatorConfig(Strict):
    config: HarnessSection = Field(default_factory=HarnessSection)


class ReasoningTrace(Strict):
    """A reasoning trace to strip from each answer before it is scored."""

    start: str | None = Field("<think>", description="The token that opens a trace; None: answers have no opening "
                              "token, the trace runs from the start to `end`.")
    end: str = Field("</think>", min_length=1, description="The token that closes a trace: what follows is scored.")
    unfinished: Literal["keep", "empty"] = Field(
        "keep", description="An answer whose trace never ends: keep it whole, or score it as empty.")


class ChatControls(Strict):
    """How requests are changed and answers cleaned (nemo-evaluator's adapter interceptors). Part of the result key
    and of `eval compare`'s like-for-like check: a system prompt changes scores."""

    system_prompt: str | None = Field(None, description="A system message put first in every chat request (before the "
                                      "task's own, if it has one); for lm-eval completions tasks, its "
                                      "--system_instruction.")
    strip_reasoning: ReasoningTrace | None = Field(None, description="Strip a reasoning trace from each answer "
                                                   "before scoring; None = score answers as they come.")
    add_params: dict[str, Any] = Field(default_factory=dict, description="Request fields to add (over the "
                                       "harness's), e.g. chat_template_kwargs: {enable_thinking: false}.")
    drop_params: list[str] = Field(default_factory=list, description="Request fields to remove, e.g. [logprobs].")
    apply_chat_template: bool | None = Field(None, description="lm-eval completions tasks: render prompts with the "
                                             "model's chat template (lm-eval --apply_chat_template); None = the "
                                             "harness's default (chat tasks always use it).")


class TaskSpec(Strict):
    name: str = Field(description="Task name in the nemo-evaluator registry (or harness.task).")
    nemo_evaluator_config: NemoEvaluatorConfig = Field(
        default_factory=NemoEvaluatorConfig, description="Merged over the evaluation-wide one."
    )
    chat: ChatControls | None = Field(None, description="Merged over evaluation.chat, field by field.")
    timeout: float | None = Field(None, gt=0, description="Overrides evaluation.timeout.")
    retries: int | None = Field(None, ge=0, description="Overrides evaluation.retries.")


class JudgeSection(Strict):
    """The model that scores the answers of a judged benchmark (MT-Bench, simple-evals' judged tasks), handed to every
    task whose harness takes one (its `extra.judge`)."""

    served: bool = Field(False, description="This run's own served model judges: its requests cross the gate on a "
                         "route of their own (`<benchmark>-judge`), within their share of the in-flight budget "
                         "(in_flight).")
    url: str | None = Field(None, description="A running judge: its chat completions URL "
                            "(https://host/v1/chat/completions).")
    model_id: str | None = Field(None, description="The judge's model name at that URL.")
    api_key_env: str | None = Field(None, description="The variable holding the judge's key (sent as a bearer "
                                    "token); its value is masked everywhere.")
    in_flight: int | None = Field(None, ge=1, description="A served judge's share of the in-flight budget: its "
                                  "requests at once, held apart from the answering benchmarks' (who keep the rest), "
                                  "so neither waits behind the other. Default: a quarter of the budget.")
    add_params: dict[str, Any] = Field(default_factory=dict, description="Request fields a served judge's requests "
                                       "are sent with, over what its harness sends: chat_template_kwargs "
                                       "{enable_thinking: false} for a reasoning model; structured_outputs {regex: "
                                       "...} to hold a model to the harness's rating format. In the result key.")

    @model_validator(mode="after")
    def _one_judge(self) -> JudgeSection:
        if self.served == bool(self.url):
            raise ValueError("set evaluation.judge.served=true (this run's model judges) or evaluation.judge.url "
                             "(a running judge), not both or neither")
        if self.url and not self.model_id:
            raise ValueError("evaluation.judge.url needs evaluation.judge.model_id (the judge's model name there)")
        if self.url and self.in_flight is not None:
            raise ValueError("evaluation.judge.in_flight is a served judge's share of this run's budget; a running "
                             "judge's requests do not cross it: drop in_flight, or set served=true")
        if self.url and self.add_params:
            raise ValueError("evaluation.judge.add_params is added by this run's gate, which a running judge's "
                             "requests do not cross: drop add_params, or set served=true")
        return self


class GateRule(Strict):
    metric: str = Field(description="A metric of every benchmark (acc), one benchmark's (gsm8k/exact_match__strict-"
                        "match), or * for all.")
    max_drop: float = Field(0.0, ge=0, description="How much worse the metric may get (a drop; a rise for a "
                            "lower-is-better metric): a change shown to exceed it is a regression.")
    primary: bool = Field(False, description="When any rule is primary, only the primary rules' metrics decide the "
                          "gate (Holm's correction over them alone); the others are shown, not deciding.")


class GateSection(Strict):
    baseline: str = Field(
        "previous", description="What the run is held against: previous (the last evaluation of another version of "
        "the model's series), a model version (rl:v2), or a run id, run name or results folder on this machine.")
    rules: list[GateRule] = Field(min_length=1, description="Each a metric and the drop it may not exceed.")
    fail_on: Literal["regression", "inconclusive"] = Field(
        "inconclusive", description="What fails the run: regression (a change beyond a margin shown), or also "
        "inconclusive (a change beyond a margin not ruled out). A gate that cannot look fails it either way.")


class EvaluationSection(Strict):
    tasks: list[TaskSpec] = Field(description="Benchmarks to run.")
    nemo_evaluator_config: NemoEvaluatorConfig = Field(
        default_factory=NemoEvaluatorConfig, description="Harness config for every task."
    )
    chat: ChatControls = Field(default_factory=ChatControls, description="Chat and reasoning controls for every "
                               "task: a system prompt, reasoning traces stripped, request fields added or dropped.")
    timeout: float = Field(14400, gt=0, description="Seconds per benchmark run before it is stopped.")
    retries: int = Field(1, ge=0, description="Retries of a failed benchmark run.")
    retry_delay: float = Field(10, ge=0, description="Seconds between retries.")
    max_parallel: int = Field(4, ge=1, description="Benchmark harnesses running at once against the one server.")
    in_flight: int | None = Field(
        None, ge=1, description="Requests in flight to the server, shared by all benchmarks; None = sized from "
        "the server's KV cache.")
    output_dir: str = Field("results", description="Where each evaluation writes its folder.")
    keep_requests: bool = Field(False, description="Keep every request body the harnesses send, per benchmark, "
                                "in <run>/requests/<benchmark>.jsonl (perf/throughput.py replays them).")
    hf_home: str | None = Field(
        None, description="A pre-populated Hugging Face cache for the harness (default: $HF_HOME)."
    )
    hf_offline: bool | None = Field(
        None, description="Hub offline switches; None = on when hf_home is set."
    )
    judge: JudgeSection | None = Field(None, description="The judge of judged benchmarks; a judged task without one "
                                       "is refused at planning.")
    gate: GateSection | None = Field(
        None, description="A regression gate: each gated metric is a regression (shown worse than its rule "
        "allows), a pass (that ruled out) or inconclusive, against the baseline; the run fails (tagged) on a "
        "regression, on inconclusive unless fail_on is regression, and whenever it cannot look: nothing "
        "comparable, a baseline it cannot find or read, a failed look-up; None = off.")


class ExportSection(Strict):
    wandb: WandbRef = Field(default_factory=WandbRef, description="Where results are exported.")
    timeout: float = Field(900, gt=0, description="Seconds the W&B export may take, uploads included: past them it "
                           "is stopped and the run fails saying so; the results stay for `eval export RUN`.")


class LimitsSection(Strict):
    """Bounds a run started through Prefect (a deployment run, a trigger: other people's parameters) cannot exceed:
    the worker's config sets them, and no such run can override them. The CLI user's own runs are not bound."""

    max_replicas: int = Field(4, ge=1, description="deployment.replicas: servers (GPU jobs) one run may hold.")
    max_gpus: int = Field(64, ge=1, description="GPUs one server may ask for: tensor × data parallel size.")
    max_restarts: int = Field(5, ge=0, description="deployment.max_restarts.")
    max_retries: int = Field(5, ge=0, description="evaluation.retries and each task's retries.")
    max_timeout: float = Field(
        86400, gt=0, description="Seconds: every timeout (evaluation and task timeouts, the server's startup, queue, "
        "state and heartbeat timeouts, the harness's request_timeout).")
    max_in_flight: int = Field(8192, ge=1, description="evaluation.in_flight.")
    max_parallel: int = Field(16, ge=1, description="evaluation.max_parallel: harnesses at once.")


class EvalConfig(Strict):
    """The whole evaluation config; also the flow's parameter, so the Prefect UI shows its form."""

    run: RunSection = Field(default_factory=RunSection)
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)
    evaluation: EvaluationSection
    export: ExportSection = Field(default_factory=ExportSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)

    @property
    def offline(self) -> bool:
        ev = self.evaluation
        return ev.hf_offline if ev.hf_offline is not None else ev.hf_home is not None


def config_path(name: str) -> Path:
    """`-c local` → config/local.yaml; a value with '/' or a YAML suffix is a path."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        path = Path(os.path.expanduser(name))
    else:
        path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config {name!r} not found ({path}); valid: {', '.join(names)} or a path to a YAML file")
    return path


def _load_file(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    if path in seen:
        raise ConfigError(f"config {path} extends itself through {' -> '.join(map(str, seen))}")
    try:
        node = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    parent = node.pop("extends", None)
    if parent is None:
        return node
    parent_path = config_path(parent) if "/" in parent or parent.endswith((".yaml", ".yml")) \
        else path.parent / f"{parent}.yaml"
    return OmegaConf.merge(_load_file(parent_path, seen + (path,)), node)


def apply_overrides(node: Any, overrides: list[str]) -> None:
    """`a.b=v` sets a key (list items by index: `evaluation.tasks.0.name=gsm8k`); values parse as YAML."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(f"override {item!r} is not key=value (e.g. deployment.tensor_parallel_size=8)")
        try:
            parsed = OmegaConf.from_dotlist([f"v={value}"])["v"]
            OmegaConf.update(node, key, parsed, merge=True, force_add=True)
        except (OmegaConfBaseException, ValueError, IndexError, yaml.YAMLError) as e:  # a value is parsed as YAML
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"cannot apply override {item!r}: {first}") from None


def load_config(name: str = "default", overrides: list[str] | None = None) -> EvalConfig:
    """Load config `name`, apply `key=value` overrides, resolve interpolations, validate."""
    node = _load_file(config_path(name))
    apply_overrides(node, overrides or [])
    _default_wandb_site(node)
    try:
        data = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve config {name!r}: {str(e).splitlines()[0]}") from None
    return validate(data)


ENV_REFERENCE = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")


def env_references(name: str = "default", overrides: list[str] | None = None) -> set[str]:
    """The environment variables config `name` with `overrides` reads (`${oc.env:NAME...}`): what a job that loads
    it elsewhere must be given."""
    found = set(ENV_REFERENCE.findall(OmegaConf.to_yaml(_load_file(config_path(name)))))
    return found.union(*(ENV_REFERENCE.findall(o) for o in overrides or []))  # applied, an override is resolved


def _default_wandb_site(node: Any) -> None:
    """Unset `run.wandb` keys come from env.toml `[wandb]`, then `$WANDB_ENTITY`/`$WANDB_PROJECT`,
    as in the training stages; `export.wandb` follows through its `${run.wandb.*}` interpolation."""
    site = wandb_settings()
    for key in ("entity", "project"):
        if OmegaConf.select(node, f"run.wandb.{key}") is None:
            value = getattr(site, key) or os.environ.get(f"WANDB_{key.upper()}")
            if value:
                OmegaConf.update(node, f"run.wandb.{key}", value, force_add=True)


def validate(data: Any) -> EvalConfig:
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e.errors()[0])) from None


def _explain(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
        prefix = ".".join(loc[:-1])
        hint = f"did you mean {'.'.join(filter(None, [prefix, close[0]]))}?" if close else \
            f"valid keys here: {', '.join(valid)}"
        return f"unknown config key {key}: {hint}"
    return f"invalid value for {key}: {err['msg']} (got {err.get('input')!r})"


def _fields_at(path: list[str]) -> list[str]:
    """The valid field names of the model at a dotted location of EvalConfig."""
    model: Any = EvalConfig
    for part in path:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)
