"""Watch W&B for new model artifact versions, for sites W&B's webhooks cannot reach.

A scheduled deployment (prefect.yaml: nano3-eval-watch) lists the watched artifacts through the
W&B public API and emits, for each version it has not seen, the same event the webhook relay
would — same id, so a version seen by both still starts one evaluation. What it has seen is kept
in a Prefect variable; the first look at an artifact only records where it stands.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL
from prefect.variables import Variable

from nemotron.config.schema import load_config
from nemotron.records import artifact_events

SEEN = "nemotron-wandb-seen"  # {entity/project/name: last version number}


@flow(name="nano3-eval-watch", log_prints=True)
def watch_wandb_artifacts(artifacts: list[str] | None = None, entity: str | None = None, project: str | None = None,
                          emit_existing: bool = False) -> list[str]:
    """Emit `wandb.artifact.link_artifact` for each new version of `artifacts` (default: run.artifacts);
    returns the versions announced."""
    import wandb

    log = get_run_logger()
    run = load_config("default").run  # artifact names; env.toml [wandb] / $WANDB_ENTITY, $WANDB_PROJECT
    entity, project = entity or run.wandb.entity, project or run.wandb.project or "nemotron"
    api = wandb.Api(timeout=30)
    seen: dict[str, int] = dict(Variable.get(SEEN, default={}) or {})
    announced = []
    for name in artifacts or list(run.artifacts.values()):
        path = f"{entity}/{project}/{name}" if entity else f"{project}/{name}"
        try:
            listed = list(api.artifacts(type_name="model", name=path))
        except (ValueError, wandb.errors.CommError) as e:
            log.warning("cannot list %s: %s", path, e)
            continue
        if path not in seen and not emit_existing:
            seen[path] = max((artifact_events.version_number(a) for a in listed), default=-1)
            log.info("watching %s from v%s on", path, seen[path])
            continue
        fresh = artifact_events.new_versions(listed, seen.get(path, -1))
        if fresh:
            artifact_events.post([artifact_events.event("LINK_ARTIFACT", a.qualified_name, name, *_owner(a))
                                  for a in fresh], PREFECT_API_URL.value(), PREFECT_API_KEY.value())
            seen[path] = artifact_events.version_number(fresh[-1])
            announced += [a.qualified_name for a in fresh]
            log.info("new in %s: %s", path, ", ".join(a.qualified_name for a in fresh))
    Variable.set(SEEN, seen, overwrite=True)
    return announced


def _owner(artifact) -> tuple[str, str]:
    """(entity, project) of a listed version."""
    entity, project, _ = artifact.qualified_name.split("/", 2)
    return entity, project
