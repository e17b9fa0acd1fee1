"""The local index of runs (nemotron.runs): the record `eval status`, the crash hook and `eval export` read."""

import threading

from nemotron import runs


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
