"""New model artifacts in W&B as Prefect events, which the deployment's trigger turns into evaluations.

Two sources make the same event: the webhook relay (`deployments/wandb_relay.py`, W&B calls it)
and the watcher flow (`flows/watch.py`, for sites W&B cannot reach). The event id is the version's
identity (entity/project/name:vN; a W&B version never changes its digest), whatever the event type
or alias, so the Prefect server keeps one event — and the trigger starts one evaluation — for
"new version", "alias added", the watcher and every repeat of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import httpx

SIGNATURE_HEADER = "X-Wandb-Signature"
_NAMESPACE = uuid.UUID("0b6f3f0e-8d5c-4c55-9a57-6a4f2b7c1e11")  # this project's uuid5 namespace
# the W&B payload template keys the relay reads (deployments/wandb-webhook-payload.json)
REQUIRED = ("event_type", "artifact_version_string", "artifact_collection_name", "entity_name", "project_name")
# a webhook body is other people's data: each field it passes on has a shape (the version becomes a flow parameter)
_SHAPES = {"event_type": r"[A-Za-z_]+", "artifact_version_string": r"[\w.-]+/[\w.-]+/[\w.-]+:[\w.-]+",
           "artifact_collection_name": r"[\w.-]+", "entity_name": r"[\w.-]+", "project_name": r"[\w.-]+",
           "alias": r"[\w.-]*", "event_author": r"[\w.@+-]*", "artifact_version": r"[\w:/.=+-]*",
           "digest": r"[0-9a-f]*"}


def signature(body: bytes, secret: str) -> str:
    """What W&B sends in X-Wandb-Signature: base64 of HMAC-SHA256 of the raw body with the shared secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def signed(body: bytes, header: str | None, secret: str) -> bool:
    return bool(header) and hmac.compare_digest(signature(body, secret), header)


def event(event_type: str, version: str, collection: str, entity: str, project: str, alias: str = "",
          payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Prefect event (the JSON `POST /api/events` takes) for one artifact version; its id is the version's."""
    return {
        "id": str(uuid.uuid5(_NAMESPACE, version)),
        "occurred": datetime.now(timezone.utc).isoformat(),
        "event": f"wandb.artifact.{event_type.lower()}",
        "resource": {"prefect.resource.id": f"wandb.artifact.{entity}/{project}/{collection}",
                     "prefect.resource.name": collection},
        "payload": {"event_type": event_type.upper(), "artifact_version_string": version,
                    "artifact_collection_name": collection, "entity_name": entity, "project_name": project,
                    "alias": alias, **(payload or {})},
    }


def from_webhook(payload: dict[str, Any]) -> dict[str, Any]:
    """The event for a W&B webhook payload; ValueError names what is missing."""
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object (use deployments/wandb-webhook-payload.json)")
    missing = [k for k in REQUIRED if not payload.get(k)]
    if missing:
        raise ValueError(f"payload lacks {', '.join(missing)} (use deployments/wandb-webhook-payload.json)")
    kept = {k: payload[k] for k in _SHAPES if payload.get(k) is not None}
    for key, value in kept.items():
        if not isinstance(value, str) or not re.fullmatch(_SHAPES[key], value, re.ASCII):
            raise ValueError(f"payload field {key}={str(value)[:80]!r} is not of the form {_SHAPES[key]}")
    return event(kept["event_type"], kept["artifact_version_string"], kept["artifact_collection_name"],
                 kept["entity_name"], kept["project_name"], kept.get("alias") or "", kept)


def post(events: list[dict[str, Any]], api_url: str, api_key: str | None = None) -> None:
    """Send events to the Prefect API (`POST /events`); a repeated id is kept once by the server."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.post(f"{api_url.rstrip('/')}/events", json=events, headers=headers, timeout=30)
    r.raise_for_status()


def version_number(artifact: Any) -> int:
    return int(str(artifact.version).lstrip("v"))


def new_versions(listed: Iterable[Any], last_seen: int) -> list[Any]:
    """Versions (W&B artifacts: `.version` = "vN") after `last_seen`, oldest first."""
    return sorted((a for a in listed if version_number(a) > last_seen), key=version_number)
