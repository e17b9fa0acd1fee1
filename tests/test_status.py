"""`eval cancel` at unit level: the states it reads from a stand-in Prefect client, in a real run's order."""

import contextlib
import uuid
from types import SimpleNamespace

import httpx
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


def _servers(monkeypatch):
    """The servers this machine recorded for the run, and the ones `eval cancel` cancels from here."""
    recorded = [{"job_id": "4711", "name": "server"}, {"job_id": "4712", "name": "server-replica-2"}]
    cancelled = []
    monkeypatch.setattr(status.runs, "servers", lambda record: recorded)
    monkeypatch.setattr(status.jobs, "cancel_recorded", cancelled.append)
    return recorded, cancelled


def test_a_run_no_process_stops_is_marked_cancelled_and_its_recorded_servers_cancelled_from_here(monkeypatch):
    """Its process is gone (a laptop closed, a worker killed): the run stays Running after the Cancelling, so after
    CANCEL_WAIT_SECONDS the command marks it Cancelled itself and cancels the server jobs it recorded."""
    recorded, cancelled = _servers(monkeypatch)
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(status.time, "monotonic", lambda: float(next(clock)))
    out, client = _cancel(monkeypatch, [Running()])
    assert client.set == ["Cancelling", "Cancelled"]
    assert cancelled == recorded
    assert out.splitlines() == [
        f"no process stopped run eval-x within {status.CANCEL_WAIT_SECONDS:.0f} s (its process is gone): marked "
        "Cancelled, and its recorded servers cancelled from here",
        "server job 4711 [server]: cancelled", "server job 4712 [server-replica-2]: cancelled"]


def test_with_no_prefect_api_the_recorded_servers_are_cancelled_from_here(monkeypatch):
    recorded, cancelled = _servers(monkeypatch)

    class _Gone(_Client):
        def read_flow_run(self, run_id):
            raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(status, "get_client", lambda sync_client: contextlib.nullcontext(_Gone([])))
    monkeypatch.setattr(status, "locate", lambda client, ref: {"flow_run_id": RUN_ID, "name": "eval-x"})
    out = status.cancel(RUN_ID[:8])
    assert cancelled == recorded
    assert "does not answer (ConnectError): the servers this machine recorded for run eval-x are cancelled" in out
    assert out.endswith("server job 4712 [server-replica-2]: cancelled")
