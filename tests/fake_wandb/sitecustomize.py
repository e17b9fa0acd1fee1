"""Loaded at interpreter start in test subprocesses: replaces `wandb.Api` with tests/fake_wandb_api.py."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fake_wandb_api  # noqa: E402 - needs the tests folder on sys.path

if os.environ.get(fake_wandb_api.ENV):
    import wandb

    wandb.Api = fake_wandb_api.api_class(json.loads(Path(os.environ[fake_wandb_api.ENV]).read_text()))
