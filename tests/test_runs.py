"""The local index of runs (nemotron.records.runs): the record `eval status`, the crash hook and `eval export` read."""

import os
import threading

from nemotron.records import runs


def test_saves_from_many_threads_keep_every_field(tmp_path, monkeypatch):
    """Issue 28: save was an unlocked read-modify-write; the flow, its replicas' threads and the cancel watch
    save at once, and a field written by one could be lost to another's older copy."""
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path))
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        for i in range(25):
            runs.save("run-1", **{f"w{n}-{i}": i})
            runs.save_server("run-1", {"job_id": f"{n}-{i}"})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = runs.load("run-1")
    assert {k for k in record if k.startswith("w")} == {f"w{n}-{i}" for n in range(8) for i in range(25)}
    assert len(runs.servers(record)) == 8 * 25


def test_status_of_a_run_whose_prefect_api_is_gone_shows_what_this_machine_recorded(tmp_path):
    """Issue 28: a run recorded here that reported to a Prefect API that is gone (a detached job's temporary one)
    or never knew it: `eval status` and `eval logs` show the local record and say why, not a traceback."""
    import json

    from nemotron.records import results
    from nemotron.serving.endpoints import free_port
    from tests.helpers import nemotron

    run_id = "7c0ffee0-1111-4222-8333-444455556666"
    run_dir = tmp_path / "results" / "smol" / "20261207-000000-7c0ffee0"
    results.write_summary(results.SuiteResult("builtin:smol", str(run_dir), (
        results.BenchmarkResult("gsm8k", "completed", str(run_dir / "gsm8k"), 3.0,
                                (results.Score("gsm8k", "exact_match", 0.25, 0.1, 4),)),)))
    record = {"flow_run_id": run_id, "name": "eval-builtin:smol", "run_dir": str(run_dir), "model": "builtin:smol",
              "benchmarks": ["gsm8k", "hellaswag"]}
    (tmp_path / "home" / "runs").mkdir(parents=True)
    (tmp_path / "home" / "runs" / f"{run_id}.json").write_text(json.dumps(record))
    gone = f"http://127.0.0.1:{free_port()}/api"
    env = {"NEMOTRON_HOME": str(tmp_path / "home"), "PREFECT_API_URL": gone}
    status = nemotron("nano3", "eval", "status", "7c0f", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[:3] == [
        f"run       eval-builtin:smol ({run_id})", "model     builtin:smol",
        f"flow      unknown: the Prefect API at {gone} does not answer (ConnectError); shown: what this machine "
        "recorded"]
    assert "  gsm8k                                completed  exact_match 0.2500" in status.stdout
    assert "  hellaswag                            not started" in status.stdout
    logs = nemotron("nano3", "eval", "logs", run_id, env=env)
    assert logs.returncode == 0 and f"(no flow-run logs: the Prefect API at {gone} does not answer" in logs.stdout
    unknown = nemotron("nano3", "eval", "status", "0badc0de", env=env)
    assert unknown.returncode == 2 and unknown.stderr == (
        f"error: no run '0badc0de' in this machine's runs, and the Prefect API at {gone} does not answer "
        "(ConnectError)\n"), unknown.stderr
    # the session's Prefect server answers, and has never heard of the run (it reported to another one)
    elsewhere = nemotron("nano3", "eval", "status", "7c0f", env={"NEMOTRON_HOME": str(tmp_path / "home")})
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert f"flow      unknown: the Prefect API at {os.environ['PREFECT_API_URL']} does not know this flow run; " \
           "shown: what this machine recorded" in elsewhere.stdout, elsewhere.stdout
    assert "Traceback" not in status.stderr + logs.stderr + unknown.stderr + elsewhere.stderr
