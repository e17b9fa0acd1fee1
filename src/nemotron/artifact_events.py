"""New model artifacts in W&B as Prefect events, which the deployment's trigger turns into evaluations.

Two sources make the same event: the webhook relay (`deployments/wandb_relay.py`, W&B calls it)
and the watcher flow (`flows/watch.py`, for sites W&B cannot reach). The event id derives from the
event type and the artifact version, so the Prefect server keeps one event — and the trigger
starts one evaluation — however often W&B repeats the webhook or both sources see the version.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import httpx

SIGNATURE_HEADER = "X-Wandb-Signature"
_NAMESPACE = uuid.UUID("0b6f3f0e-8d5c-4c55-9a57-6a4f2b7c1e11")  # this project's uuid5 namespace
# the W&B payload template keys the relay reads (deployments/wandb-webhook-payload.json)
REQUIRED = ("event_type", "artifact_version_string", "artifact_collection_name", "entity_name", "project_name")


def signature(body: bytes, secret: str) -> str:
    """What W&B sends in X-Wandb-Signature: base64 of HMAC-SHA256 of the raw body with the shared secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def signed(body: bytes, header: str | None, secret: str) -> bool:
    return bool(header) and hmac.compare_digest(signature(body, secret), header)


def event(event_type: str, version: str, collection: str, entity: str, project: str, alias: str = "",
          payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Prefect event (the JSON `POST /api/events` takes) for one artifact version."""
    key = f"{event_type.upper()}:{version}:{alias}"
    return {
        "id": str(uuid.uuid5(_NAMESPACE, key)),
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
    missing = [k for k in REQUIRED if not payload.get(k)]
    if missing:
        raise ValueError(f"payload lacks {', '.join(missing)} (use deployments/wandb-webhook-payload.json)")
    return event(payload["event_type"], payload["artifact_version_string"], payload["artifact_collection_name"],
                 payload["entity_name"], payload["project_name"], payload.get("alias") or "", payload)


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
