"""A run created through Prefect takes data, not code (issue 14): allowed keys, literal values, config names."""

import pytest

from nemotron.config.request import EvalRequest, check_prefect_override
from nemotron.errors import ConfigError


@pytest.mark.parametrize("item", [
    "run.model=rl:v2", "evaluation.nemo_evaluator_config.config.params.limit_samples=10",
    "evaluation.tasks.0.nemo_evaluator_config.config.params.extra.num_fewshot=0", "evaluation.retries=3",
    "deployment.tensor_parallel_size=8", "deployment.replicas=2", "export.wandb.project=my-evals",
    "deployment.checkpoint_path=/ckpt/step_1", "evaluation.gate.baseline=rl:v2"])
def test_data_overrides_are_allowed(item):
    check_prefect_override(item)


@pytest.mark.parametrize("item, says", [
    ("deployment.command=bash -c 'id > /tmp/pwned'", "'deployment.command' is not allowed"),
    ("deployment.extra_args=--trust-remote-code", "'deployment.extra_args' is not allowed"),
    ("deployment.env.LD_PRELOAD=/tmp/x.so", "'deployment.env.LD_PRELOAD' is not allowed"),
    ("deployment.venv=/tmp/venv", "not allowed"), ("deployment.image=evil:latest", "not allowed"),
    ("evaluation.output_dir=/etc", "not allowed"), ("evaluation.hf_home=/tmp", "not allowed"),
    ("evaluation.nemo_evaluator_config.config.params.extra.tokenizer=/x", "not allowed"),
    ("evaluation.nemo_evaluator_config.config.params.task=/tmp/evil.yaml", "not allowed"),
    ("evaluation.nemo_evaluator_config.config.params={extra: {args: x}}", "not allowed"),
    ("run.model=${oc.env:WANDB_API_KEY}", "literal values only"),
    ("export.wandb.project=a b", "literal values only"), ("run.wandb.entity=[a]", "literal values only"),
    ("run.profile=other-cluster", "'run.profile' is not allowed"),  # the worker's default; `profile` is a parameter
    ("evaluation.gate.rules.0.max_drop=1", "not allowed"),  # the rules come from the deployment's config
    ("evaluation.gate.fail_on=regression", "not allowed"),  # nor does a trigger loosen what fails the run
])
def test_code_paths_and_interpolation_are_refused_naming_the_key(item, says):
    with pytest.raises(ConfigError, match=r"override .*" + says.replace("(", r"\(").replace("'", "'")):
        check_prefect_override(item)


def test_untrusted_request_is_checked_before_the_config_is_loaded(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    request = EvalRequest(config="local", overrides=["deployment.served_model_name=${oc.env:WANDB_API_KEY}"])
    assert request.load(trusted=True).deployment.served_model_name == "k" * 40  # the CLI user's own choice
    with pytest.raises(ConfigError, match="not allowed in a run started through Prefect"):
        request.load(trusted=False)
    with pytest.raises(ConfigError, match="uses a config of the worker's config/ folder by name"):
        EvalRequest(config="/tmp/mine.yaml").load(trusted=False)
    assert EvalRequest(config="local", model="rl:v3",
                       overrides=["evaluation.retries=0"]).load(trusted=False).run.model == "rl:v3"


@pytest.mark.parametrize(("override", "says"), [
    ("deployment.replicas=50", "deployment.replicas=50 is over limits.max_replicas=4"),
    ("deployment.tensor_parallel_size=128", "deployment.tensor_parallel_size × data_parallel_size=128 is over "
                                            "limits.max_gpus=64"),
    ("deployment.max_restarts=1000", "deployment.max_restarts=1000 is over limits.max_restarts=5"),
    ("deployment.queue_timeout=1e9", "deployment.queue_timeout=1e+09 is over limits.max_timeout=86400"),
    ("deployment.hang_timeout=100000", "deployment.hang_timeout=100000 is over limits.max_timeout=86400"),
    ("export.timeout=100000", "export.timeout=100000 is over limits.max_timeout=86400"),
    ("run.api_wait=100000", "run.api_wait=100000 is over limits.max_timeout=86400"),
    ("evaluation.tasks.0.timeout=999999", "evaluation.tasks.0.timeout=999999 is over limits.max_timeout=86400"),
    ("evaluation.nemo_evaluator_config.config.params.request_timeout=100000",
     "evaluation.nemo_evaluator_config.config.params.request_timeout=100000 is over limits.max_timeout=86400"),
    ("evaluation.tasks.1.retries=99", "evaluation.tasks.1.retries=99 is over limits.max_retries=5"),
    ("evaluation.in_flight=100000", "evaluation.in_flight=100000 is over limits.max_in_flight=8192"),
    ("evaluation.max_parallel=500", "evaluation.max_parallel=500 is over limits.max_parallel=16"),
])
def test_a_run_started_through_prefect_cannot_go_past_the_workers_limits(override, says):
    """Issue 28: deployment parameters are other people's data; a replica count, a restart budget or a timeout
    they set holds the team's GPUs. The worker's config bounds them (limits.*), which they cannot override."""
    request = EvalRequest(config="local", overrides=[override])
    with pytest.raises(ConfigError) as e:
        request.load(trusted=False)
    assert str(e.value) == f"{says}: a run started through Prefect cannot go past the limits of the worker's " \
                           "config (limits.*); lower the value, or run it from the CLI"
    request.load(trusted=True)  # the CLI user's own run on their own machine


def test_the_limits_themselves_cannot_be_overridden_through_prefect():
    with pytest.raises(ConfigError, match="override 'limits.max_replicas' is not allowed"):
        check_prefect_override("limits.max_replicas=100")
    assert EvalRequest(config="local", overrides=["deployment.replicas=4"]).load(trusted=False).deployment.replicas == 4


@pytest.mark.parametrize("model", ['/ckpt"; id; "', "/ckpt/a b", "~/$(id)", "/a,tokenizer=x"])
def test_a_model_path_that_would_reach_the_harness_shell_line_is_refused(model):
    with pytest.raises(ConfigError, match="invalid model"):
        EvalRequest.checked(model=model)
