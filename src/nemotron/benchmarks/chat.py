"""Chat and reasoning controls, mapped onto nemo-evaluator's adapter: a system prompt, reasoning traces stripped before
scoring, request fields added or dropped, and lm-eval's chat template for completions tasks.

The adapter (a proxy nemo-evaluator starts beside the harness, with a chain of interceptors) is what
nemo-evaluator-launcher uses for these, so a config that sets them scores as it would there. A benchmark without
controls keeps the direct path (client mode: the harness sends straight to the gate); one with them sends through its
own adapter, which sends to the gate, so its requests still share the suite's in-flight budget."""

from __future__ import annotations

import shlex
from typing import Any

from nemotron.config.schema import ChatControls

# Without controls the harness sends straight to the gate (nemo-evaluator's client mode): no adapter proxy per harness,
# which answered ~95 requests/s whatever the budget (a Flask app, a thread per request in flight; perf/scale.py,
# README). What it did per request is done elsewhere: lm-eval's own cache (`--use_cache <out>/lm_cache`, written as
# each answer arrives) replays answered requests on a rerun; the gate counts answers for the board and keeps request
# bodies when asked (evaluation.keep_requests).
DIRECT = {"mode": "client", "use_caching": False, "tracking_requests_stats": False, "generate_html_report": False}


def effective(suite: ChatControls, task: ChatControls | None) -> dict[str, Any]:
    """One benchmark's controls: the task's fields over the suite's (request fields to add merged), as plain data
    without unset fields, so that no controls is `{}` (and a result key without controls is the same as before)."""
    merged = suite.model_dump()
    if task is not None:
        own = task.model_dump(include=task.model_fields_set)
        if "add_params" in own:
            own["add_params"] = {**merged["add_params"], **own["add_params"]}
        merged.update(own)
    return {k: v for k, v in merged.items() if v not in (None, {}, [])}


def through_adapter(controls: dict[str, Any], endpoint_type: str) -> bool:
    """Whether the benchmark's requests go through an adapter (its own port) rather than straight to the gate."""
    return adapter_config(controls, "", endpoint_type)["mode"] == "server"


def adapter_config(controls: dict[str, Any], output_dir: str, endpoint_type: str) -> dict[str, Any]:
    """The `adapter_config` of the harness's run config: the direct path, or an adapter whose interceptors change the
    requests (system message, fields) before the endpoint interceptor sends them and clean the answers after."""
    before, after = [], []
    if controls.get("system_prompt") and endpoint_type == "chat":
        before.append({"name": "system_message",
                       "config": {"system_message": controls["system_prompt"], "strategy": "prepend"}})
    if controls.get("add_params") or controls.get("drop_params"):
        before.append({"name": "payload_modifier",
                       "config": {"params_to_add": controls.get("add_params") or None,
                                  "params_to_remove": controls.get("drop_params") or None}})
    if trace := controls.get("strip_reasoning"):
        after.append({"name": "reasoning", "config": {
            "start_reasoning_token": trace["start"], "end_reasoning_token": trace["end"],
            "include_if_not_finished": trace["unfinished"] == "keep",
            # its statistics beside the benchmark's output, not in the default /tmp folder every run shares
            "cache_dir": f"{output_dir}/reasoning_stats_cache", "enable_caching": False}})
    if not before and not after:
        return dict(DIRECT)
    return {"mode": "server", "interceptors": [*before, {"name": "endpoint"}, *after], "post_eval_hooks": [],
            "endpoint_type": endpoint_type}


def lm_eval_args(controls: dict[str, Any], endpoint_type: str) -> str:
    """lm-eval's own switches for what its completions tasks do client-side (the adapter sees a finished prompt
    there): the chat template and the system instruction. Shell-quoted: nemo-evaluator runs the command in a shell."""
    if endpoint_type == "chat":
        return ""  # chat tasks: lm-eval always applies the template; the system message is the adapter's
    args = []
    if controls.get("apply_chat_template"):
        args.append("--apply_chat_template")
    if controls.get("system_prompt"):
        args += ["--system_instruction", shlex.quote(controls["system_prompt"])]
    return " ".join(args)


def recorded(run_config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The controls a benchmark ran with, read back from its run config (what `eval compare` holds side by side,
    named as the config names them), and the harness's `extra.args` without the switches that carried them."""
    found: dict[str, Any] = {}
    adapter = ((run_config.get("target") or {}).get("api_endpoint") or {}).get("adapter_config") or {}
    for ic in adapter.get("interceptors") or []:
        cfg = ic.get("config") or {}
        if ic.get("name") == "system_message":
            found["system_prompt"] = cfg.get("system_message")
        elif ic.get("name") == "payload_modifier":
            found.update({"add_params": cfg.get("params_to_add"), "drop_params": cfg.get("params_to_remove")})
        elif ic.get("name") == "reasoning":
            found["strip_reasoning"] = {"start": cfg.get("start_reasoning_token"),
                                        "end": cfg.get("end_reasoning_token"),
                                        "unfinished": "keep" if cfg.get("include_if_not_finished", True) else "empty"}
    params = (run_config.get("config") or {}).get("params") or {}
    args, rest = shlex.split(str((params.get("extra") or {}).get("args") or "")), []
    while args:
        arg = args.pop(0)
        if arg == "--apply_chat_template":
            found["apply_chat_template"] = True
        elif arg == "--system_instruction" and args:
            found["system_prompt"] = args.pop(0)
        else:
            rest.append(arg)
    return {k: v for k, v in found.items() if v not in (None, {}, [])}, shlex.join(rest)
