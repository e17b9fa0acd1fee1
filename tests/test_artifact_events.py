import json
from types import SimpleNamespace

import pytest

from nemotron.records import artifact_events

PAYLOAD = {"event_type": "ADD_ARTIFACT_ALIAS", "alias": "latest", "artifact_collection_name": "nano3-rl-model",
           "artifact_version_string": "team/nemotron/nano3-rl-model:v5", "entity_name": "team",
           "project_name": "nemotron"}


def test_signature_is_base64_hmac_sha256_of_the_body():
    # openssl: printf '%s' '{"event_type":"ADD_ARTIFACT_ALIAS"}' | openssl dgst -sha256 -hmac s3cret -binary | base64
    body = b'{"event_type":"ADD_ARTIFACT_ALIAS"}'
    assert artifact_events.signature(body, "s3cret") == "i7ZNa6IbB5i5drjDwWJeByEyUeMltMZ4GRyI2cs/Zfs="
    assert artifact_events.signed(body, "i7ZNa6IbB5i5drjDwWJeByEyUeMltMZ4GRyI2cs/Zfs=", "s3cret")
    assert not artifact_events.signed(body, "i7ZNa6IbB5i5drjDwWJeByEyUeMltMZ4GRyI2cs/Zfs=", "other-secret")
    assert not artifact_events.signed(body + b" ", "i7ZNa6IbB5i5drjDwWJeByEyUeMltMZ4GRyI2cs/Zfs=", "s3cret")
    assert not artifact_events.signed(body, None, "s3cret") and not artifact_events.signed(body, "", "s3cret")


def test_webhook_becomes_an_event_whose_id_follows_the_version():
    e = artifact_events.from_webhook(PAYLOAD)
    assert e["event"] == "wandb.artifact.add_artifact_alias"
    assert e["resource"] == {"prefect.resource.id": "wandb.artifact.team/nemotron/nano3-rl-model",
                             "prefect.resource.name": "nano3-rl-model"}
    assert e["payload"]["artifact_version_string"] == "team/nemotron/nano3-rl-model:v5"
    assert artifact_events.from_webhook(dict(PAYLOAD))["id"] == e["id"]  # a repeat: the same event
    other = {**PAYLOAD, "artifact_version_string": "team/nemotron/nano3-rl-model:v6"}
    assert artifact_events.from_webhook(other)["id"] != e["id"]
    json.dumps(e)  # what POST /api/events takes


def test_webhook_without_the_template_keys_is_refused_naming_them():
    with pytest.raises(ValueError, match="payload lacks artifact_version_string, entity_name"):
        artifact_events.from_webhook({k: v for k, v in PAYLOAD.items() if k not in ("artifact_version_string",
                                                                                     "entity_name")})


def test_new_versions_after_the_last_seen_oldest_first():
    listed = [SimpleNamespace(version=v, qualified_name=f"t/p/m:{v}") for v in ("v3", "v0", "v10", "v2")]
    assert [a.version for a in artifact_events.new_versions(listed, 2)] == ["v3", "v10"]
    assert artifact_events.new_versions(listed, 10) == []


def test_one_version_is_one_event_whatever_the_event_type_alias_or_source():
    """Issue 14: "new version", "alias added" and the watcher's event for v5 are one event, so one run."""
    created = artifact_events.from_webhook({**PAYLOAD, "event_type": "CREATE_ARTIFACT", "alias": ""})
    aliased = artifact_events.from_webhook(PAYLOAD)
    watched = artifact_events.event("LINK_ARTIFACT", "team/nemotron/nano3-rl-model:v5", "nano3-rl-model", "team",
                                    "nemotron")
    assert created["id"] == aliased["id"] == watched["id"]


@pytest.mark.parametrize("field, value", [("artifact_version_string", "team/nemotron/m:v5; rm -rf ~"),
                                          ("artifact_version_string", "/etc/passwd"), ("event_type", "x.y"),
                                          ("entity_name", ["a"]), ("alias", "a b")])
def test_a_field_of_the_wrong_shape_is_refused_naming_it(field, value):
    with pytest.raises(ValueError, match=f"payload field {field}="):
        artifact_events.from_webhook({**PAYLOAD, field: value})
