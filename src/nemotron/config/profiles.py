"""Execution profiles from `env.toml`, shared with the training stages.

`[wandb]` holds the W&B entity/project; every other table is a profile (`--run NAME`), which may
`extends = "other"` to inherit and override keys. The file is `$NEMOTRON_ENV_FILE`, else the first
`env.toml` found walking up from the working directory.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nemotron.config import secrets
from nemotron.errors import ConfigError

ENV_FILE_VAR = "NEMOTRON_ENV_FILE"
RESERVED = ("wandb",)


class WandbSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity: str | None = Field(None, description="W&B entity (team or user).")
    project: str | None = Field(None, description="W&B project.")


class Profile(BaseModel):
    """Where the model server runs: this machine, or a Slurm cluster reached locally or over SSH.

    The same env.toml serves the training stages, so the keys Nemotron documents for them are
    accepted; evaluation uses the ones that shape a single server job.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(description="The table name in env.toml.")
    executor: Literal["slurm", "local"] = Field("slurm", description="NeMo-Run executor.")
    account: str | None = Field(None, description="Slurm account.")
    partition: str | None = Field(None, description="Slurm partition.")
    run_partition: str | None = Field(None, description="Partition for --run (attached); default: partition.")
    batch_partition: str | None = Field(None, description="Partition for --batch (detached); default: partition.")
    tunnel: Literal["ssh", "local"] = Field("local", description="How the cluster is reached.")
    host: str | None = Field(None, description="Login node (tunnel = ssh).")
    user: str | None = Field(None, description="User on the login node.")
    identity: str | None = Field(None, description="SSH private key (tunnel = ssh).")
    remote_job_dir: str | None = Field(None, description="Job directory on the cluster (shared with the nodes).")
    time: str = Field("04:00:00", description="Slurm walltime of the server job.")
    nodes: int = Field(1, ge=1, description="Nodes for the server job.")
    ntasks_per_node: int = Field(1, ge=1, description="Tasks per node (the server is one task).")
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs per node (None: no GPU request).")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs for the server task.")
    mem: str | None = Field(None, description="Slurm --mem of the server job.")
    exclusive: bool | None = Field(None, description="Slurm --exclusive.")
    container_image: str | None = Field(None, alias="container",
                                        description="Server container (pyxis --container-image); alias: container.")
    mounts: list[str] = Field(default_factory=list, description="Container mounts, src:dst[:flags].")
    startup_commands: list[str] = Field(default_factory=list, description="Shell lines run before the server.")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Extra environment for the job.")
    packager: str | None = Field(None, description="Training stages' code packager (unused by eval).")
    build_partition: str | None = Field(None, description="Partition for `enroot import` (--force-squash).")
    build_time: str | None = Field(None, description="Walltime for `enroot import`.")
    build_image: str | None = Field(None, description="Training stages' build image (unused by eval).")
    build_cache_dir: str | None = Field(None, description="Training stages' build cache (unused by eval).")
    build_include_gpus: bool = Field(False, description="Request GPUs for `enroot import`.")
    build_gpus_per_node: int | None = Field(None, ge=0, description="GPUs for `enroot import`.")

    def check(self) -> Profile:
        if self.executor == "slurm" and self.tunnel == "ssh" and not (self.host and self.user):
            raise ConfigError(f"profile {self.name!r} uses tunnel = \"ssh\" but has no host/user")
        if self.executor == "slurm" and self.tunnel == "ssh" and not self.remote_job_dir:
            raise ConfigError(f"profile {self.name!r} uses tunnel = \"ssh\" but has no remote_job_dir "
                              "(a directory on the cluster's shared filesystem)")
        return self

    def partition_for(self, detached: bool) -> str | None:
        return (self.batch_partition if detached else self.run_partition) or self.partition

    def job_env(self) -> dict[str, str]:
        """`env_vars` as NeMo-Run may write them into the sbatch script (`export K=V`, unquoted): the ones that
        hold no secret, each value quoted for the shell."""
        return {k: shlex.quote(v) for k, v in self.env_vars.items() if not secrets.is_secret_name(k)}

    def secret_env(self) -> dict[str, str]:
        """The secret-named `env_vars`: they reach a job through its private file, never its script."""
        return {k: v for k, v in self.env_vars.items() if secrets.is_secret_name(k)}


def env_file(start: Path | None = None) -> Path | None:
    """`$NEMOTRON_ENV_FILE`, else the nearest env.toml from `start` (default: cwd) upwards."""
    if os.environ.get(ENV_FILE_VAR):
        path = Path(os.environ[ENV_FILE_VAR]).expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_FILE_VAR}={path} does not exist")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "env.toml").is_file():
            return folder / "env.toml"
    return None


def read(path: Path | None = None) -> dict[str, Any]:
    path = path or env_file()
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


def names(data: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in data.items() if isinstance(v, dict) and k not in RESERVED)


def load_profile(name: str, path: Path | None = None) -> Profile:
    """The profile `name` with its `extends` chain applied; ConfigError lists the valid names."""
    path = path or env_file()
    data = read(path)
    if name not in names(data):
        if path is None:
            raise ConfigError(f"unknown profile {name!r}: no env.toml found (set {ENV_FILE_VAR} or create one)")
        raise ConfigError(f"unknown profile {name!r} in {path}; valid profiles: {', '.join(names(data)) or 'none'}")
    merged: dict[str, Any] = {}
    chain = [name]
    while (parent := data[chain[-1]].get("extends")) is not None:
        if parent in chain:
            raise ConfigError(f"profile {name!r} extends itself: {' -> '.join(chain + [parent])}")
        if parent not in names(data):
            raise ConfigError(f"profile {chain[-1]!r} extends unknown profile {parent!r}; "
                              f"valid profiles: {', '.join(names(data))}")
        chain.append(parent)
    for table in reversed(chain):
        merged.update({k: v for k, v in data[table].items() if k != "extends"})
    if isinstance(merged.get("env_vars"), dict):
        merged["env_vars"] = {k: _from_environment(v, f"env_vars.{k} of profile {name!r}")
                              for k, v in merged["env_vars"].items()}
    try:
        return Profile(name=name, **merged).check()
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown key {key!r} in profile {name!r}; valid keys: "
                              + ", ".join(f.alias or n for n, f in Profile.model_fields.items() if n != "name")
                              + _suggest(key)) from None
        raise ConfigError(f"invalid {key} in profile {name!r}: {err['msg']} (got {err.get('input')!r})") from None


REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _from_environment(value: Any, where: str) -> Any:
    """`"${NAME}"` is the value of the variable NAME here (a secret need not be written into env.toml)."""
    if not isinstance(value, str) or not (m := REFERENCE.fullmatch(value)):
        return value
    if m.group(1) not in os.environ:
        raise ConfigError(f"{where} = {value!r} names a variable that is not set here; set {m.group(1)} or write "
                          "the value")
    return os.environ[m.group(1)]


def _suggest(key: str) -> str:
    names = [f.alias or n for n, f in Profile.model_fields.items()] + ["container_image"]
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def wandb_settings(path: Path | None = None) -> WandbSettings:
    """The `[wandb]` table (entity, project), or empty settings when there is none."""
    table = read(path).get("wandb") or {}
    try:
        return WandbSettings(**table)
    except ValidationError as e:
        raise ConfigError(f"invalid [wandb] in env.toml: {e.errors()[0]['msg']}") from None
