"""`eval cancel` at unit level: the states it reads from a stand-in Prefect client, in a real run's order."""

import contextlib
import uuid
from types import SimpleNamespace

from prefect.states import Cancelled, Crashed, Running

from flows import status

RUN_ID = str(uuid.uuid4())


class _Client:
    """A flow run whose states are read one per poll: what the API holds while the cancelled process stops."""

    def __init__(self, states):
        self.states, self.set = list(states), []

    def read_flow_run(self, run_id):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return SimpleNamespace(id=run_id, name="eval-x", state=state)

    def set_flow_run_state(self, run_id, state, force=False):
        self.set.append(state.name)


def _cancel(monkeypatch, states):
    client = _Client(states)
    monkeypatch.setattr(status, "get_client", lambda sync_client: contextlib.nullcontext(client))
    monkeypatch.setattr(status, "locate", lambda client, ref: {"flow_run_id": RUN_ID, "name": "eval-x"})
    monkeypatch.setattr(status.time, "sleep", lambda seconds: None)
    return status.cancel(RUN_ID[:8]), client


def test_cancel_waits_through_the_crash_an_interrupted_attached_run_passes_to_its_cancelled(monkeypatch):
    """The CI failure of stop 37: the interrupt is a crash to Prefect, and the crash hook marks the run Cancelled
    only after it cancelled its servers. The command read the Crashed in between and reported it."""
    out, client = _cancel(monkeypatch, [Running(), Running(), Crashed(), Crashed(), Crashed(), Cancelled()])
    assert out == f"run eval-x ({RUN_ID}): Cancelled"
    assert client.set == ["Cancelling"]


def test_cancel_reports_a_crash_no_hook_turns_into_cancelled(monkeypatch):
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(status.time, "monotonic", lambda: float(next(clock)))
    out, client = _cancel(monkeypatch, [Running(), Crashed()])
    assert out == f"run eval-x ({RUN_ID}): Crashed"
    assert client.set == ["Cancelling"]
