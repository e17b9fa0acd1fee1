"""Property-based tests: what users type and what other people send either works or is refused
in ONE line — never a traceback, never a server started.

Input reaches the evaluation from four doors: the CLI (`key=value` overrides, `-t`, `run.model`),
a run created through Prefect (its overrides and model are other people's data: checked and
limited), `env.toml` profiles, and W&B webhooks relayed to Prefect. Hand-written tests cover the
inputs someone thought of; these let hypothesis look for the ones nobody did. Nothing here serves a
model or submits a run: the flow and the batch submission are replaced by recorders, and every
example is a dry run, a validation or an in-process HTTP call (no hypothesis database is written).

A failing example found once stays pinned with `@example` so a regression cannot hide behind
hypothesis' randomness.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from nemotron import cli
from nemotron.benchmarks import registry, sizing
from nemotron.config import models, secrets
from nemotron.config.profiles import Profile, load_profile
from nemotron.config.request import MODEL_PATTERN, PREFECT_OVERRIDABLE, EvalRequest, check_prefect_override
from nemotron.errors import ConfigError
from nemotron.records import artifact_events, wandb_export
from tests.helpers import REPO, SHARED_HF_HOME, hf_home

# hypothesis keeps caches (and failure patches) in ./.hypothesis even without a database: not in the repository
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nemotron-tests-hypothesis")


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- strategies -----------------------------------------------------------------------------------

REAL_KEYS = [
    "deployment.tensor_parallel_size", "evaluation.nemo_evaluator_config.config.params.limit_samples",
    "run.model", "deployment.port", "evaluation.tasks.0.name", "evaluation.max_parallel", "nope.key",
    "deployment", "evaluation.tasks", "evaluation.tasks.1", "evaluation.tasks.0.retries", "run.artifacts.rl",
    "deployment.checkpoint_path", "deployment.env.HF_TOKEN", "evaluation.hf_home", "evaluation.hf_offline",
    "evaluation.in_flight", "evaluation.output_dir", "export.wandb.project", "deployment.tensor_paralel_size",
    "evaluation.tasks.0.nemo_evaluator_config.config.params.extra.num_fewshot",
]
NASTY_VALUES = [
    "${oc.env:HOME}", "${oc.env:NOPE}", "${run.model}", "${", "[1,2", "{a: b}", "[]", "{}", "-1", "0", "8",
    "1e9", "null", "~", "true", "'x'", '"x', "", "a: b", "- x", "@x", "...", "*a", "&a", "|", "\x00",
    "!!python/object/apply:os.system ['id']", "`id`", "$(id)", "x; rm -rf /", "gsm8k", "rl:latest",
    "~nobody-here", "~/x",
]
MODEL_SHAPES = [
    "rl:latest", "sft:v2", "rl:3", "a/b/c:v1", "a/b/c/d:v1", "builtin:nope", "builtin:smollm2-135m-instruct",
    "/tmp/x y", "~/$(id)", "./ckpt", "../ckpt", "..", "~", "", " ", ":", "a:b:c", "/ckpt/step_100",
    "e/p/n:v1;id", "x'y", "--help", "${oc.env:HOME}",
]

keys = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=20))
values = st.one_of(st.sampled_from(NASTY_VALUES), st.text(max_size=30), st.integers().map(str),
                   st.floats().map(repr))
# what users mostly type: valid overrides, so that a hostile one also meets a config that otherwise works
GOOD_OVERRIDES = [
    "deployment.tensor_parallel_size=2", "deployment.port=8000", "evaluation.max_parallel=3",
    "evaluation.nemo_evaluator_config.config.params.limit_samples=5", "evaluation.tasks.0.name=gsm8k",
    "evaluation.tasks.0.retries=0", "evaluation.in_flight=16", "run.artifacts.rl=my-rl-model", "run.model=rl:v2",
    "export.wandb.project=evals", "evaluation.tasks.0.nemo_evaluator_config.config.params.extra.num_fewshot=0",
]
overrides = st.lists(st.one_of(st.sampled_from(GOOD_OVERRIDES), st.builds(lambda k, v: f"{k}={v}", keys, values)),
                     max_size=3)
task_names = st.one_of(st.sampled_from(["gsm8k", "hellaswag", "arc_challenge", "adlr_mmlu"]),
                       st.sampled_from(registry.valid_names()), st.text(max_size=20))
model_refs = st.one_of(st.sampled_from(MODEL_SHAPES), st.text(max_size=30),
                       st.from_regex(MODEL_PATTERN, fullmatch=True))

# -- environment ----------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch, tmp_path):
    """The offline data, a throwaway NEMOTRON_HOME and env.toml; whatever the CLI puts into os.environ
    (secret overrides move there) or remembers as a secret is dropped afterwards."""
    before = dict(os.environ)
    monkeypatch.setenv("HF_HOME", str(hf_home() or SHARED_HF_HOME))
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "env.toml").write_text('[local]\nexecutor = "local"\n')
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(tmp_path / "env.toml"))
    monkeypatch.setattr(secrets, "_remembered", set())
    yield tmp_path
    for k in set(os.environ) - set(before):
        del os.environ[k]
    os.environ.update(before)


@pytest.fixture
def started(monkeypatch):
    """Recorders in place of everything that would serve a model or submit a run."""
    calls: list[tuple[str, EvalRequest]] = []
    monkeypatch.setattr(cli, "run_flow", lambda request: calls.append(("run", request)) or 0)
    monkeypatch.setattr(cli, "submit_batch", lambda request: calls.append(("batch", request)) or 0)
    monkeypatch.setattr(cli, "batch_route", lambda: cli.BatchRoute(deployment=True, api="http://prefect/api"))
    monkeypatch.setattr(wandb_export, "detect_login", lambda *a, **k: False)
    # the dry run's request count: lm-eval's ~8 s per new configuration is not what these examples test (that is
    # tests/test_sizing.py); here it is never available, and the plan must say so and go on
    monkeypatch.setattr(sizing, "_run_counter", lambda todo, *_: {k: {"unknown": "not counted"} for k in todo})
    return calls


def one_error_line(err: str) -> bool:
    return err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1


# -- 1. the CLI -----------------------------------------------------------------------------------


@fuzz(60)
@given(config=st.sampled_from(["local", "default"]), items=overrides, tasks=st.lists(task_names, max_size=2),
       model=st.none() | model_refs)
@example(config="local", items=["evaluation.tasks.0.name=[1,2"], tasks=[], model=None)  # yaml ParserError
@example(config="local", items=[], tasks=[], model="\x00")  # yaml ReaderError
@example(config="local", items=["evaluation.max_parallel=!!python/object/apply:os.system ['id']"], tasks=[],
         model=None)  # yaml ConstructorError
@example(config="local", items=["a\nb=1"], tasks=[], model=None)  # the error names the key unquoted: two lines
@example(config="local", items=[], tasks=[], model="~nobody-here/ckpt")  # expanduser: RuntimeError
@example(config="local", items=["evaluation.output_dir=~nobody-here"], tasks=[], model=None)  # ditto
@example(config="local", items=["evaluation.hf_home=~nobody-here"], tasks=[], model=None)  # ditto
def test_dry_run_plans_or_refuses_in_one_line(env, started, capsys, config, items, tasks, model):
    argv = ["nano3", "eval", "-c", config, f"evaluation.output_dir={env / 'out'}",  # the items may override it
            *[a for t in tasks for a in ("-t", t)], *items, *([f"run.model={model}"] if model is not None else []),
            "--dry-run"]
    started.clear()
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert started == []
    event(f"exit {rc}")
    if rc == 0:
        assert out.startswith("# dry run: nothing was started\n") and err == ""
    else:
        assert rc == 2 and one_error_line(err), (rc, err)
    assert not (env / "out").exists()


@fuzz(40)
@given(mode=st.sampled_from([(), ("-r", "local"), ("-b", "local")]), items=overrides,
       tasks=st.lists(task_names, max_size=2), model=st.none() | model_refs)
@example(mode=("-b", "local"), items=["run.model=..."], tasks=[], model=None)  # accepted, then yaml ParserError
def test_refused_run_starts_nothing_and_says_why_in_one_line(env, started, capsys, mode, items, tasks, model):
    batch = mode[:1] == ("-b",)
    argv = ["nano3", "eval", "-c", "local", *mode,
            *([] if batch else [f"evaluation.output_dir={env / 'out'}"]),  # not a Prefect-overridable key
            *[a for t in tasks for a in ("-t", t)], *items, *([f"run.model={model}"] if model is not None else [])]
    started.clear()
    capsys.readouterr()
    # a run moves secret override values into the environment and masks its argv: keep both to this example
    with mock.patch.dict(os.environ), mock.patch.object(sys, "argv", ["nemotron", *argv]):
        rc = cli.main(argv)
    _, err = capsys.readouterr()
    event(f"exit {rc}")
    if rc == 2:
        assert started == [] and one_error_line(err), err
    else:
        assert rc == 0 and err == "" and len(started) == 1
        kind, request = started[0]
        assert kind == ("batch" if batch else "run") and isinstance(request, EvalRequest)
        if batch:  # what the worker will receive passes the worker's own check
            for item in request.overrides:
                check_prefect_override(item)
    assert not (env / "out").exists()


# -- 2. runs created through Prefect --------------------------------------------------------------

ALLOWED_KEY = re.compile("|".join(f"({k})" for k in PREFECT_OVERRIDABLE))
prefect_keys = st.one_of(st.sampled_from(REAL_KEYS), st.sampled_from(
    ["run.wandb.entity", "export.wandb.entity", "deployment.command", "deployment.extra_args", "deployment.env.X",
     "evaluation.output_dir", "run.artifacts.rl", "evaluation.tasks.12.timeout",
     "evaluation.nemo_evaluator_config.config.params.temperature"]), st.text(max_size=20))


@fuzz(300)
@given(key=prefect_keys, value=values)
def test_prefect_override_accepts_only_listed_keys_with_literal_values(key, value):
    item = f"{key}={value}"
    try:
        check_prefect_override(item)
    except ConfigError as e:
        assert "\n" not in str(e)
        return event("refused")
    event("accepted")
    key, _, value = item.partition("=")
    assert ALLOWED_KEY.fullmatch(key)
    assert "${" not in value and not set(value) & set(" \t\n'\"`;$,{}[]()|&<>*!\\")


@fuzz(80)
@given(items=st.lists(st.one_of(st.sampled_from(GOOD_OVERRIDES), st.builds(lambda k, v: f"{k}={v}", prefect_keys,
                                                                          values)), max_size=3))
@example(items=["run.model=@"])  # a literal check_prefect_override allows, which YAML cannot scan
@example(items=["evaluation.tasks.0.name=..."])  # ditto: YAML parses `...` as a document end marker
def test_untrusted_request_loads_or_raises_config_error(env, items):
    try:
        request = EvalRequest.checked(config="local", overrides=items)
    except ConfigError:
        return
    try:
        request.load(trusted=False)
    except ConfigError as e:
        assert "\n" not in str(e)
        return event("refused at load")
    event("loaded")


# -- 3. env.toml profiles -------------------------------------------------------------------------

PROFILE_KEYS = [f.alias or n for n, f in Profile.model_fields.items() if n != "name"] + ["extends", "container_image"]


def toml_string(s: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, except that TOML also wants DEL escaped."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


toml_scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=15), st.booleans(),
                         st.sampled_from(["slurm", "local", "ssh", "04:00:00", "a", "b", "wandb"]))
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3),
                        st.dictionaries(st.text(max_size=8), toml_scalars, max_size=2))
GOOD_ENTRIES = st.sampled_from([
    ("executor", "local"), ("executor", "slurm"), ("tunnel", "local"), ("partition", "batch"), ("nodes", 2),
    ("gpus_per_node", 8), ("time", "01:00:00"), ("mounts", ["/lustre:/lustre"]), ("env_vars", {"A": "b"}),
    ("container", "vllm/vllm-openai:latest"), ("exclusive", True), ("extends", "a"), ("extends", "b"),
])
tables = st.one_of(
    st.lists(GOOD_ENTRIES, max_size=4).map(dict),
    st.dictionaries(st.one_of(st.sampled_from(PROFILE_KEYS), st.text(max_size=10)), toml_values, max_size=6))
profile_names = st.sampled_from(["a", "b", "wandb"]) | st.text(max_size=8)


@fuzz(150)
@given(doc=st.dictionaries(profile_names, tables, max_size=3), pick=st.integers(0, 3), other=profile_names)
@example(doc={"a": {"env_vars": {"x\ny": 1}}}, pick=0, other="a")  # the error's key is not quoted: two lines
def test_profile_loads_or_refuses_in_one_line(tmp_path, doc, pick, other):
    name = list(doc)[pick] if pick < len(doc) else other  # mostly a table of the file
    path = tmp_path / "env.toml"
    path.write_text("".join(f"[{toml_string(t)}]\n" + "".join(f"{toml_string(k)} = {toml_value(v)}\n"
                                                               for k, v in body.items()) for t, body in doc.items()))
    try:
        profile = load_profile(name, path)
    except ConfigError as e:
        assert "\n" not in str(e), str(e)
        return event("refused")
    event("loaded")
    assert isinstance(profile, Profile) and profile.name == name


@fuzz(60)
@given(content=st.binary(max_size=60), name=profile_names)
@example(content=b"\xff[a]", name="a")  # not UTF-8: UnicodeDecodeError escapes
def test_unreadable_env_toml_is_refused_in_one_line(tmp_path, content, name):
    path = tmp_path / "env.toml"
    path.write_bytes(content)
    try:
        load_profile(name, path)
    except ConfigError as e:
        assert "\n" not in str(e), str(e)


# -- 4. W&B webhooks through the relay ------------------------------------------------------------

SECRET = "fuzz-webhook-secret"


def _relay_module():
    spec = importlib.util.spec_from_file_location("wandb_relay", REPO / "deployments" / "wandb_relay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def relay(monkeypatch):
    from fastapi.testclient import TestClient

    posted: list[list[dict]] = []
    monkeypatch.setattr(artifact_events, "post", lambda events, *a, **k: posted.append(events))
    client = TestClient(_relay_module().create_app(SECRET, "http://prefect.invalid/api"),
                        raise_server_exceptions=False)
    return client, posted


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
field_text = st.one_of(st.text(max_size=25), st.sampled_from(
    ["ADD_ARTIFACT_ALIAS", "CREATE_ARTIFACT", "e/p/n:v1", "team/nemotron/nano3-rl-model:v3", "nano3-rl-model",
     "team", "nemotron", "latest", "", "${artifact_version_string}", "e/p/n:v1; id", "../../x:v1"]))
SHAPED = {"event_type": r"[A-Za-z_]+", "artifact_version_string": r"[\w.-]+/[\w.-]+/[\w.-]+:[\w.-]+",
          "artifact_collection_name": r"[\w.-]+", "entity_name": r"[\w.-]+", "project_name": r"[\w.-]+",
          "alias": r"[\w.-]*", "event_author": r"[\w.@+-]*", "artifact_version": r"[\w:/.=+-]*", "digest": r"[0-9a-f]*"}
OPTIONAL = ("alias", "event_author", "artifact_version", "digest")
template_bodies = st.fixed_dictionaries(
    {k: st.one_of(field_text, st.from_regex(SHAPED[k], fullmatch=True)) for k in artifact_events.REQUIRED},
    optional={k: st.one_of(field_text, json_values) for k in OPTIONAL}).map(lambda d: json.dumps(d).encode())
shaped_bodies = st.fixed_dictionaries(
    {k: st.from_regex(SHAPED[k], fullmatch=True) for k in artifact_events.REQUIRED},
    optional={k: st.from_regex(SHAPED[k], fullmatch=True) for k in OPTIONAL},
).map(lambda d: json.dumps(d).encode())
bodies = st.one_of(shaped_bodies, template_bodies, json_values.map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=80))

# a version the relay's own check accepts but the flow's `model` parameter (pydantic, Rust regex: its \w is not
# Python's) refuses: the trigger would create a run that fails on its parameters
SUPERSCRIPT = json.dumps({"event_type": "CREATE_ARTIFACT", "artifact_version_string": "\u00b2/p/n:v1",
                          "artifact_collection_name": "n", "entity_name": "e", "project_name": "p"}).encode()


@fuzz(150)
@given(body=bodies)
@example(body=SUPERSCRIPT)
@example(body=b"[" * 100_000)  # signed but nested beyond the recursion limit: RecursionError, 500
def test_signed_webhook_relays_a_valid_model_or_is_refused_4xx(relay, body):
    client, posted = relay
    posted.clear()
    r = client.post("/wandb", content=body,
                    headers={artifact_events.SIGNATURE_HEADER: artifact_events.signature(body, SECRET)})
    event(f"HTTP {r.status_code}")
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    if r.status_code != 200:
        assert posted == []
        return
    [[emitted]] = posted
    version = emitted["payload"]["artifact_version_string"]
    assert re.fullmatch(MODEL_PATTERN, version)
    assert EvalRequest.checked(model=version).model == version  # the flow's `model` parameter takes it


@fuzz(60)
@given(body=bodies, header=st.none() | st.text(max_size=50) | st.sampled_from(["", "x" * 44]),
       other_secret=st.text(min_size=1, max_size=20).filter(lambda s: s != SECRET))
def test_unsigned_or_wrongly_signed_webhook_is_401_and_emits_nothing(relay, body, header, other_secret):
    client, posted = relay
    posted.clear()
    forged = artifact_events.signature(body, other_secret) if header is None else header
    headers = {} if header == "" else {artifact_events.SIGNATURE_HEADER: forged}
    try:
        r = client.post("/wandb", content=body, headers=headers)
    except UnicodeEncodeError:  # httpx refuses a non-ASCII header value itself: nothing was sent
        return
    assert r.status_code == 401 and posted == []


# -- 5. model references --------------------------------------------------------------------------


@fuzz(200)
@given(model=model_refs)
@example(model="~nobody-here")  # accepted, then Path.expanduser raises RuntimeError in the flow
def test_model_reference_is_accepted_plain_or_refused_in_one_line(env, model):
    try:
        request = EvalRequest.checked(model=model, config="local")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert request.model == model
    assert not set(model) & set(" \t\n\r'\"`;$,{}[]()|&<>*!?\\=")  # nothing a shell line would read as syntax
    try:  # what the flow does with it first (a deployment run, a trigger): classify it, touching nothing
        ref = models.parse(request.load(trusted=False))
    except ConfigError as e:
        assert "\n" not in str(e)
        return event("accepted, refused by the config")
    event(f"accepted: {ref.kind}")
    assert ref.ref == model.strip()
