"""W&B webhook → Prefect event relay: W&B cannot post a Prefect event itself (no event id, no
signature check), so this small service verifies the webhook and emits the event for it.

    WANDB_WEBHOOK_SECRET=... PREFECT_API_URL=http://prefect:4200/api \
        uv run python deployments/wandb_relay.py --host 0.0.0.0 --port 8765

In W&B: Automations → webhook to https://<this host>/wandb with the secret, events "new version"
/ "alias added" on the model artifacts, payload deployments/wandb-webhook-payload.json.
A missing or wrong X-Wandb-Signature is refused with 401 and emits nothing; a body over 64 KiB (a webhook is about
1 KB) is refused with 413 before it is read.
"""

from __future__ import annotations

import argparse
import json
import os

import anyio
import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from nemotron.records import artifact_events

MAX_BODY = 64 * 1024


async def read_body(request: Request) -> bytes:
    """The body, refused (413) once it is known to exceed MAX_BODY: by its Content-Length, before anything is read,
    else as it arrives. Anyone can post here; only a signed body is worth parsing."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise HTTPException(413, f"a webhook body is at most {MAX_BODY} bytes (Content-Length: {declared[:20]})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"a webhook body is at most {MAX_BODY} bytes")
    return bytes(body)


def create_app(secret: str, api_url: str, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="nemotron W&B relay")

    @app.post("/wandb")
    async def wandb_webhook(request: Request) -> dict[str, str]:
        body = await read_body(request)
        if not artifact_events.signed(body, request.headers.get(artifact_events.SIGNATURE_HEADER), secret):
            raise HTTPException(401, f"missing or invalid {artifact_events.SIGNATURE_HEADER}")
        try:
            event = artifact_events.from_webhook(json.loads(body))
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; nesting too deep: RecursionError
            raise HTTPException(422, f"not a W&B artifact webhook: {e}") from None
        try:
            await anyio.to_thread.run_sync(artifact_events.post, [event], api_url, api_key)
        except httpx.HTTPError as e:
            raise HTTPException(502, f"could not hand the event to Prefect: {e}") from None
        return {"event": event["event"], "id": event["id"], "model": event["payload"]["artifact_version_string"]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    secret, api = os.environ.get("WANDB_WEBHOOK_SECRET"), os.environ.get("PREFECT_API_URL")
    if not secret or not api:
        raise SystemExit("error: set WANDB_WEBHOOK_SECRET (the secret configured in W&B) and PREFECT_API_URL")
    uvicorn.run(create_app(secret, api, os.environ.get("PREFECT_API_KEY")), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
