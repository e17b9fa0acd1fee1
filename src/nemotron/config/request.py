"""What one asks an evaluation for: the flow's typed parameters, shared by the CLI, deployments and triggers.

The same fields reach the flow from `nemotron nano3 eval`, `prefect deployment run --param ...`,
the Prefect UI form and the W&B automation; their JSON schema (enums of config and task names,
patterns for model references and overrides) lets the Prefect server reject a bad value before
a run is created.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nemotron.benchmarks import registry
from nemotron.config.schema import CONFIG_DIR, EvalConfig, load_config
from nemotron.errors import ConfigError

# no character class may start with a-z, #, / or @: Prefect's CLI prints the pattern through rich markup.
# A path holds no quote, space, comma, `$` or `;`: nemo-evaluator renders it (as the tokenizer) into a shell line.
MODEL_PATTERN = r"^(builtin:[\w.-]+|(/|~|\.)[\w.+~@/-]*|([\w.-]+/){0,2}[\w.-]+(:[\w.-]+)?)$"

ModelReference = Annotated[str, Field(
    pattern=MODEL_PATTERN, examples=["rl:latest", "sft:v2", "team/nemotron/nano3-rl-model:v3", "/ckpt/step_100"],
    description="What to evaluate: a stage alias (rl:latest, sft:latest, pretrain:latest, rl:v2), a W&B artifact "
    "entity/project/name:alias, builtin:NAME, or a checkpoint path. Empty: the config's run.model.")]
TaskName = Literal[tuple(sorted({*registry.valid_names(), *(i.qualified for i in registry.tasks().values())}))]
ConfigName = Literal[tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))]
ConfigPath = Annotated[str, Field(pattern=r"^\S+\.ya?ml$", description="A YAML config file on the worker.")]
ProfileName = Annotated[str, Field(pattern=r"^[\w.-]+$", description="A profile (table) in the worker's env.toml.")]
Override = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.-]*=", examples=["deployment.tensor_parallel_size=8"],
                                description="key=value, as on the command line.")]


# What a run created through Prefect (a deployment run from the UI or `prefect deployment run`, a
# trigger) may override: what to evaluate, how much, how patiently, and where scores go in W&B.
# Nothing that becomes a command, an environment, a path written to, or a host to bind.
_HARNESS_PARAMS = r"nemo_evaluator_config\.config\.params\.(limit_samples|max_new_tokens|max_retries|parallelism" \
    r"|temperature|top_p|request_timeout|extra\.num_fewshot)"
PREFECT_OVERRIDABLE = (
    r"run\.(model|api_wait)", r"run\.wandb\.(entity|project)", r"run\.artifacts\.\w+",
    r"deployment\.(checkpoint_path|tensor_parallel_size|data_parallel_size|startup_timeout|queue_timeout"
    r"|state_timeout|heartbeat_timeout|hang_timeout|replicas|max_restarts|health_interval)",
    r"evaluation\.(timeout|retries|retry_delay|max_parallel|in_flight|gate\.baseline)",
    rf"evaluation\.{_HARNESS_PARAMS}",
    r"evaluation\.tasks\.\d+\.(name|timeout|retries)", rf"evaluation\.tasks\.\d+\.{_HARNESS_PARAMS}",
    r"export\.(timeout|wandb\.(entity|project))",
)
_OVERRIDABLE = re.compile("|".join(f"({k})" for k in PREFECT_OVERRIDABLE))
_LITERAL = re.compile(r"^[\w.+~@/:-]*$")  # no interpolation, quoting, spaces, lists or maps


def check_prefect_override(item: str) -> None:
    """One override of a run created through Prefect: an allowed key, a literal value; ConfigError otherwise."""
    key, _, value = item.partition("=")
    if not _OVERRIDABLE.fullmatch(key):
        raise ConfigError(f"override {key!r} is not allowed in a run started through Prefect (a deployment run or a "
                          "trigger): such runs may set only the model, tasks, limits, few-shot, generation, timeouts, "
                          "retries and the W&B target (README: Deployments); run it from the CLI to change it")
    if not _LITERAL.fullmatch(value):
        raise ConfigError(f"override {item!r}: a run started through Prefect takes literal values only (letters, "
                          "digits and . _ - + ~ @ / :), no ${...} interpolation, quotes, spaces, lists or maps")


def over_limits(cfg: EvalConfig) -> list[str]:
    """Each value of `cfg` past its bound in `cfg.limits`, as `key=value is over limits.name=bound`."""
    lim, dep, ev = cfg.limits, cfg.deployment, cfg.evaluation
    checks: list[tuple[str, float | None, str, float]] = [
        ("deployment.replicas", dep.replicas, "max_replicas", lim.max_replicas),
        ("deployment.tensor_parallel_size × data_parallel_size", dep.tensor_parallel_size * dep.data_parallel_size,
         "max_gpus", lim.max_gpus),
        ("deployment.max_restarts", dep.max_restarts, "max_restarts", lim.max_restarts),
        ("evaluation.retries", ev.retries, "max_retries", lim.max_retries),
        ("evaluation.max_parallel", ev.max_parallel, "max_parallel", lim.max_parallel),
        ("evaluation.in_flight", ev.in_flight, "max_in_flight", lim.max_in_flight),
        *((f"deployment.{k}", getattr(dep, k), "max_timeout", lim.max_timeout)
          for k in ("startup_timeout", "queue_timeout", "state_timeout", "heartbeat_timeout", "hang_timeout")),
        ("evaluation.timeout", ev.timeout, "max_timeout", lim.max_timeout),
        ("export.timeout", cfg.export.timeout, "max_timeout", lim.max_timeout),
        ("run.api_wait", cfg.run.api_wait, "max_timeout", lim.max_timeout),
        ("evaluation.nemo_evaluator_config.config.params.request_timeout",
         ev.nemo_evaluator_config.config.params.request_timeout, "max_timeout", lim.max_timeout),
    ]
    for i, task in enumerate(ev.tasks):
        checks += [(f"evaluation.tasks.{i}.timeout", task.timeout, "max_timeout", lim.max_timeout),
                   (f"evaluation.tasks.{i}.retries", task.retries, "max_retries", lim.max_retries),
                   (f"evaluation.tasks.{i}.nemo_evaluator_config.config.params.request_timeout",
                    task.nemo_evaluator_config.config.params.request_timeout, "max_timeout", lim.max_timeout)]
    return [f"{key}={value:g} is over limits.{name}={bound:g}" for key, value, name, bound in checks
            if value is not None and value > bound]


class EvalRequest(BaseModel):
    """One evaluation, as the flow's parameters."""

    model_config = ConfigDict(extra="forbid")

    model: ModelReference | None = None
    tasks: list[TaskName] | None = Field(None, description="Benchmarks to run; empty: the config's tasks.")
    config: ConfigName | ConfigPath = Field("default", description="Config name in config/, or a YAML path.")
    profile: ProfileName | None = Field(None, description="Serve on this env.toml profile; empty: this machine.")
    overrides: list[Override] = Field(default_factory=list, description="Config overrides, key=value.")
    force_squash: bool = Field(False, description="Re-import the server's container image.")

    @classmethod
    def checked(cls, **fields: object) -> EvalRequest:
        """Validate, turning the first problem into a one-line ConfigError."""
        try:
            return cls(**fields)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"invalid {where}: {err['msg']} (got {str(err.get('input'))[:200]!r})") from None

    def load(self, trusted: bool) -> EvalConfig:
        """The evaluation config. An untrusted request (created through Prefect: a deployment run, a trigger)
        uses one of config/*.yaml and only the overrides `check_prefect_override` allows; the CLI user on
        their own machine (trusted) keeps config paths and every override."""
        if not trusted:
            if self.config.endswith((".yaml", ".yml")):
                raise ConfigError(f"config {self.config!r}: a run started through Prefect uses a config of the "
                                  f"worker's config/ folder by name ({', '.join(ConfigName.__args__)})")
            for item in self.overrides:
                check_prefect_override(item)
        cfg = load_config(self.config, self.config_overrides())
        if not trusted and (over := over_limits(cfg)):
            raise ConfigError(f"{over[0]}: a run started through Prefect cannot go past the limits of the worker's "
                              "config (limits.*); lower the value, or run it from the CLI")
        return cfg

    def config_overrides(self) -> list[str]:
        """The overrides, with `model` applied last (it wins, like a trailing `run.model=...`)."""
        return [*self.overrides, *([f"run.model={self.model}"] if self.model else [])]
