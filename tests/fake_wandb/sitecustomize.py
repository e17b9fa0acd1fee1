"""Loaded at interpreter start in test subprocesses: replaces `wandb.Api` with tests/fake_wandb_api.py."""

import json
import os
import sys
from pathlib import Path

if os.environ.get("NEMOTRON_TEST_WANDB_ARTIFACTS"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fake_wandb_api
    import wandb

    wandb.Api = fake_wandb_api.api_class(json.loads(Path(os.environ["NEMOTRON_TEST_WANDB_ARTIFACTS"]).read_text()))
