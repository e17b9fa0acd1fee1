"""A stand-in for `wandb.Api` artifact look-ups (no W&B server is reachable here).

Only the public-API boundary is faked: the flow's own W&B code (runs, tables, artifacts) is the
real library in offline mode. Artifacts are given as {name: spec}, where a name may be an alias
(`team/nemotron/nano3-rl-model:latest`) or a version, and spec holds qualified_name, digest,
aliases, metadata, references (file:// URIs) and files ({name: text}, for download()).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ENV = "NEMOTRON_TEST_WANDB_ARTIFACTS"  # a JSON file of specs, for CLI subprocesses (see fake_wandb/)


class FakeArtifact:
    def __init__(self, spec: dict[str, Any]):
        self.qualified_name = spec["qualified_name"]
        self.name = self.qualified_name.rsplit("/", 1)[-1]
        self.version = self.name.split(":", 1)[1]
        self.type = spec.get("type", "model")
        self.digest = spec.get("digest", "0" * 32)
        self.aliases = list(spec.get("aliases", []))
        self.metadata = dict(spec.get("metadata", {}))
        entries = {Path(r).name: SimpleNamespace(ref=r) for r in spec.get("references", [])}
        entries.update({n: SimpleNamespace(ref=None) for n in spec.get("files", {})})
        self.manifest = SimpleNamespace(entries=entries)
        self._files = spec.get("files", {})

    def download(self, root: str | None = None) -> str:
        for name, text in self._files.items():
            Path(root, name).parent.mkdir(parents=True, exist_ok=True)
            Path(root, name).write_text(text)
        return str(root)


def api_class(specs: dict[str, dict[str, Any]]) -> type:
    class FakeApi:
        calls: list[str] = []

        def __init__(self, *args: Any, **kwargs: Any):
            pass

        def artifact(self, name: str, type: str | None = None) -> FakeArtifact:
            FakeApi.calls.append(name)
            if name not in specs:
                entity_project, _, short = name.rpartition("/")
                raise ValueError(f"artifact membership {short!r} not found in {entity_project!r}")
            return FakeArtifact(specs[name])

        def artifacts(self, type_name: str, name: str, per_page: int = 50) -> list[FakeArtifact]:
            """The versions of collection `name` (entity/project/name), one per qualified name."""
            versions = {s["qualified_name"]: s for s in specs.values() if s["qualified_name"].split(":")[0] == name}
            if not versions:
                raise ValueError(f"artifact collection {name!r} not found")
            return [FakeArtifact(s) for s in versions.values()]

    return FakeApi


def install(monkeypatch, specs: dict[str, dict[str, Any]]) -> type:
    import wandb

    fake = api_class(specs)
    monkeypatch.setattr(wandb, "Api", fake)
    return fake


def subprocess_env(tmp_path: Path, specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Environment for a CLI subprocess whose `wandb.Api` is the fake (via fake_wandb/sitecustomize.py)."""
    path = tmp_path / "wandb-artifacts.json"
    path.write_text(json.dumps(specs))
    site = str(Path(__file__).parent / "fake_wandb")
    return {ENV: str(path), "PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}
