"""What one asks an evaluation for: the flow's typed parameters, shared by the CLI, deployments and triggers.

The same fields reach the flow from `nemotron nano3 eval`, `prefect deployment run --param ...`,
the Prefect UI form and the W&B automation; their JSON schema (enums of config and task names,
patterns for model references and overrides) lets the Prefect server reject a bad value before
a run is created.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nemotron import registry
from nemotron.config import CONFIG_DIR
from nemotron.errors import ConfigError

# no character class may start with a-z, #, / or @: Prefect's CLI prints the pattern through rich markup
MODEL_PATTERN = r"^(builtin:[\w.-]+|(/|~|\.).*|([\w.-]+/){0,2}[\w.-]+(:[\w.-]+)?)$"

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

    def config_overrides(self) -> list[str]:
        """The overrides, with `model` applied last (it wins, like a trailing `run.model=...`)."""
        return [*self.overrides, *([f"run.model={self.model}"] if self.model else [])]
