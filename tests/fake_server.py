"""A deterministic OpenAI-compatible endpoint for fault injection only (never for the e2e test).

It accepts vLLM's command line (so `deployment.command` can point at it) and can misbehave:
--never-healthy (starts, logs, never answers), --healthy-after S (/health is 503 for S seconds),
--fail-logprobs (500 on echo/logprobs requests),
--delay S (every completion takes S seconds), --fail-first N (503 for the first N requests);
--journal FILE records each start and request, so a test can count what reached a server;
--slow-health S makes /health take S seconds once a completion was asked for (vLLM's health under load);
--require-env NAME exits at once when the variable NAME (a secret it needs) is not set;
--die-after N exits on the request after the first N, and --never-healthy-on-restart (with --journal) never
becomes healthy once started again, so a test can lose a server and its relaunch;
--think opens every chat answer with a finished reasoning trace that names another answer
(`<think>The answer is 7.</think>`), as a reasoning model's do;
--answers FILE (JSON: question → answer) answers those questions (the last "Question: ...\nAnswer:" of a prompt,
as gsm8k asks) with their answer, so a test decides which share of a benchmark a "model" gets right; with
--answers-in-model the file is answers.json in the `--model` folder, so one command serves versions that answer
differently.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--served-model-name", default="fake")
    ap.add_argument("--never-healthy", action="store_true")
    ap.add_argument("--healthy-after", type=float, default=0.0, help="seconds of a loading model: /health says 503")
    ap.add_argument("--fail-logprobs", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--answer", default="The answer is 42.", help="what every completion says")
    ap.add_argument("--think", action="store_true", help="chat answers start with <think>The answer is 7.</think>")
    ap.add_argument("--fail-first", type=int, default=0, help="answer the first N completion requests with a 503")
    ap.add_argument("--die-after", type=int, default=0, help="exit, as if killed, on the request after the first N")
    ap.add_argument("--never-healthy-on-restart", action="store_true",
                    help="with --journal: a start after the first never becomes healthy")
    ap.add_argument("--journal", help="append `start` when started and `request` per completion request (with its "
                    "Authorization header, if any)")
    ap.add_argument("--reports-version", help="GET /version answers this (vLLM's route); else 404")
    ap.add_argument("--tag", help="ignored: lets a test find its own server with pgrep")
    ap.add_argument("--model", help="the checkpoint folder (vLLM's flag)")
    ap.add_argument("--answers-in-model", action="store_true", help="--answers is answers.json in --model")
    ap.add_argument("--answers", help="JSON file: question → the answer to give to a prompt asking it")
    ap.add_argument("--slow-health", type=float, default=0.0,
                    help="/health takes this many seconds once the server has had a completion request")
    ap.add_argument("--require-env", help="a variable the server needs (a secret): without it, it exits at once")
    args, _ = ap.parse_known_args()
    if args.require_env and not os.environ.get(args.require_env):
        sys.exit(f"fake server: {args.require_env} is not set")

    def journal(what: str) -> None:
        if args.journal:
            with open(args.journal, "a") as f:
                f.write(what + "\n")

    restarted = bool(args.journal) and os.path.exists(args.journal) and "start" in open(args.journal).read()
    journal("start")
    print(f"fake server: loading model {args.served_model_name}", flush=True)
    if args.never_healthy or (args.never_healthy_on_restart and restarted):
        while True:
            print("fake server: still loading weights", flush=True)
            time.sleep(1)

    ready_at = time.monotonic() + args.healthy_after
    answers = os.path.join(args.model, "answers.json") if args.answers_in_model else args.answers
    known = json.loads(open(answers).read()) if answers else {}

    def answer(prompt: str) -> str:
        asked = prompt.rsplit("Question: ", 1)[-1].split("\nAnswer:", 1)[0].strip()
        return known.get(asked, args.answer)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                if self.server.posts:
                    time.sleep(args.slow_health)
                self._send(200 if time.monotonic() >= ready_at else 503, {})
            elif self.path == "/version" and args.reports_version:
                self._send(200, {"version": args.reports_version})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            journal("request" + (f" authorization={auth}" if (auth := self.headers.get("Authorization")) else ""))
            self.server.posts += 1
            if 0 < args.die_after < self.server.posts:
                print("fake server: dying (injected fault)", flush=True)
                os._exit(1)
            if self.server.posts <= args.fail_first:
                self._send(503, {"error": {"message": "injected fault: server overloaded"}})
                return
            time.sleep(args.delay)
            if args.fail_logprobs and req.get("echo"):
                self._send(500, {"error": {"message": "injected fault: logprobs unavailable"}})
                return
            if self.path.endswith("/chat/completions"):  # a chat task: the last message is the prompt
                said = answer(str((req.get("messages") or [{}])[-1].get("content", "")))
                said = f"<think>The answer is 7.</think> {said}" if args.think else said
                self._send(200, {"id": "chat-fake", "object": "chat.completion", "model": args.served_model_name,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": f" {said}\n\n"}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}})
                return
            prompts = req.get("prompt")
            prompts = prompts if isinstance(prompts, list) else [prompts]
            choices = [{"index": i, "text": f" {answer(str(p))}\n\n", "finish_reason": "stop", "logprobs": None}
                       for i, p in enumerate(prompts)]
            self._send(200, {"id": "cmpl-fake", "object": "text_completion", "model": args.served_model_name,
                             "choices": choices,
                             "usage": {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}})

        def log_message(self, fmt: str, *a) -> None:
            sys.stdout.write("fake server: " + fmt % a + "\n")
            sys.stdout.flush()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.posts = 0
    server.serve_forever()


if __name__ == "__main__":
    main()
