"""Read what an offline W&B run recorded (its `run-<id>.wandb` transaction log), as `wandb sync` would.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
records, each with a 7-byte header (crc32, length, type: full/first/middle/last) and a protobuf Record.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, LAST = 1, 2, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    folder: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def artifact(self, type_: str):
        (found,) = [a for a in self.artifacts if a.type == type_]
        return found

    def table(self, key: str) -> dict[str, Any]:
        """A logged wandb.Table, as the JSON file the run keeps in files/media/table/."""
        return json.loads((self.folder / "files" / json.loads(self.summary[f"{key}/path"])).read_text())


def read(folder: Path) -> OfflineRun:
    (log,) = Path(folder).glob("run-*.wandb")
    out = OfflineRun(Path(folder))
    for r in records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.run = r.run
            out.config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "summary":
            out.summary.update({_key(u): u.value_json for u in r.summary.update})
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "artifact":
            out.artifacts.append(r.artifact)
    return out


def runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under a WANDB_DIR, oldest first."""
    return [read(f) for f in sorted(Path(wandb_dir).glob("wandb/offline-run-*"))]
