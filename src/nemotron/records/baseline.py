"""The baseline a run is held against, and the regression gate's judgement (evaluation.gate).

Earlier evaluations live in Prefect (a score table per run, keyed by the model's series); the flow reads them and
hands this module what it found and a look-up. Every way the gate cannot look — a failed look-up, a baseline it
cannot find, no results folder to compare, one that cannot be read — is a judgement that does not pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from nemotron.config import models
from nemotron.config.schema import EvalConfig, GateSection
from nemotron.errors import ConfigError
from nemotron.records import compare, results
from nemotron.records.results import Previous

NOT_ACCEPTED = frozenset({"regression", "inconclusive"})  # a tripped run never becomes a baseline

Lookup = Callable[[str, str], Previous | None]  # (scores key, model version) → that version's accepted evaluation


def accepted(model: str, completed: bool, tags: Iterable[str], other_than: str | None = None,
             version: str | None = None) -> bool:
    """An earlier evaluation of `model` can be the baseline: its run Completed untagged by a gate, of another
    version than `other_than` (a second evaluation of one version is no "previous"), or of `version`."""
    if model == other_than or (version is not None and model != version):
        return False
    return completed and not NOT_ACCEPTED & set(tags)


def changes_against(before: Previous | None, run_dir: Path, warn) -> list[compare.Change] | None:
    """Every metric of this run against `before`, tested (None without its results folder here)."""
    if before is None or before.run_dir is None:
        return None
    try:
        return compare.compare(compare.load(Path(before.run_dir), before.model), compare.load(run_dir))
    except Exception as e:  # noqa: BLE001 - a comparison that cannot be made leaves the scores as they are
        warn("no tested comparison with %s: %s", before.model, e)
        return None


def judge(gate_cfg: GateSection | None, previous: Previous | None, changes: list[compare.Change] | None,
          cfg: EvalConfig | None, run_dir: Path, warn, lookup_failed: str | None = None,
          look_up: Lookup | None = None) -> compare.GateOutcome | None:
    """The gate against its baseline: `previous` (and `changes` against it, `lookup_failed` if finding it raised),
    else the version, run or results folder `gate.baseline` names, found through `look_up`."""
    if gate_cfg is None:
        return None
    rules = compare.rules_of(gate_cfg)
    fail_on = gate_cfg.fail_on
    if gate_cfg.baseline == "previous":
        if lookup_failed is not None:
            return compare.cannot_look("the previous evaluation", lookup_failed, fail_on)
        if previous is None:
            warn("regression gate: no previous evaluation of this series to hold the run against: passed")
            return compare.GateOutcome("no previous evaluation", fail_on=fail_on,
                                       note="no previous evaluation of this series to hold the run against")
        if changes is None:
            return compare.cannot_look(previous.model, f"the previous evaluation ({previous.model}) has no results "
                                       "folder on this machine to compare with", fail_on)
        return compare.gate(changes, rules, previous.model, fail_on)
    try:
        folder = compare.results_folder(gate_cfg.baseline)
        label = gate_cfg.baseline
    except ConfigError as not_a_run:
        try:  # a model version: rl:v2 (W&B: looked up, not downloaded), a path, a built-in
            ref = models.parse(cfg.model_copy(update={"run": cfg.run.model_copy(update={"model": gate_cfg.baseline})}))
            version = models.resolve(ref, warn, local=False).version if ref.kind == "wandb" else ref.version
        except ConfigError as e:
            return compare.cannot_look(gate_cfg.baseline, f"baseline {gate_cfg.baseline!r}: {e}", fail_on)
        try:
            if look_up is None:
                raise RuntimeError("no look-up of earlier evaluations here")
            found = look_up(results.artifact_key(ref.series, "scores"), version)
        except Exception as e:  # noqa: BLE001 - a look-up that fails is a gate that cannot look
            return compare.cannot_look(gate_cfg.baseline, f"the look-up of {gate_cfg.baseline!r} failed: {e}", fail_on)
        if found is None or found.run_dir is None:
            return compare.cannot_look(gate_cfg.baseline, f"baseline {gate_cfg.baseline!r} not found: no evaluation "
                                       f"of {version} with its results on this machine ({not_a_run})", fail_on)
        folder, label = Path(found.run_dir), found.model
    try:
        return compare.gate(compare.compare(compare.load(folder, label), compare.load(run_dir)), rules, label, fail_on)
    except Exception as e:  # noqa: BLE001 - a baseline that cannot be read is a gate that cannot look
        return compare.cannot_look(label, f"baseline {label} ({folder}) could not be compared: {e}", fail_on)
