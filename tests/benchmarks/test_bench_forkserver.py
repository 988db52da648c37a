"""The fork server behind pgn-bench's workers: a task that crashes or hangs is a row that says so, and the server
goes on serving (the real measurements through it are in test_bench_harness)."""

import json
import os
import time

import pytest

from pgn.benchmarks import forkserver
from pgn.benchmarks.harness import run_task, worker_env
from pgn.benchmarks.worker import Task

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="the fork server runs on Linux only")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with forkserver.ForkServer(worker_env(1), log=tmp_path_factory.mktemp("server") / "server.log") as server:
        yield server


def _task(inputs, mode="measure"):
    return Task(mode=mode, model="resnet4", runtime="torch", device="cpu", size=(32, 32), batch=1, inputs=str(inputs),
                repeats=1, warmup=0, threads=1)


def test_a_task_that_fails_is_its_reason(server, tmp_path):
    result = run_task(_task(tmp_path / "missing-inputs.pt"), tmp_path, 1, 60, server=server)
    assert result["status"] == "failed" and "missing-inputs.pt" in result["reason"]


def test_a_worker_that_dies_is_the_last_line_of_its_output(server, tmp_path):
    task_path = tmp_path / "task-broken.json"
    task_path.write_text("{not a task")
    reply = server.run(task_path, tmp_path / "result-broken.json", tmp_path / "log-broken.txt", 60)
    assert (reply["exit"], reply["timed_out"]) == (1, False)
    assert "JSONDecodeError" in (tmp_path / "log-broken.txt").read_text().strip().splitlines()[-1]


def test_a_task_past_its_time_is_killed_and_the_server_goes_on(server, tmp_path):
    fifo = tmp_path / "inputs.pt"
    os.mkfifo(fifo)  # nobody writes: loading the inputs blocks forever
    start = time.monotonic()
    result = run_task(_task(fifo), tmp_path, 1, 1.0, server=server)
    assert result == {"status": "failed", "reason": "worker timed out after 1 s"}
    assert time.monotonic() - start < 30
    assert run_task(_task(tmp_path / "other.pt"), tmp_path, 1, 60, server=server)["status"] == "failed"  # still serving


def test_tasks_run_side_by_side(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    fifos = [tmp_path / f"inputs-{i}.pt" for i in range(2)]
    for fifo in fifos:
        os.mkfifo(fifo)
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda f: run_task(_task(f), tmp_path, 1, 3.0, server=server), fifos))
    assert [r["reason"] for r in results] == ["worker timed out after 3 s"] * 2
    assert time.monotonic() - start < 6  # both waited at once, not one after the other
    assert json.loads(json.dumps(results))  # plain data


def test_the_server_sets_what_it_preloaded_aside_from_garbage_collection(unfrozen_heap, capsys):
    import gc

    try:
        forkserver.preload_modules(["json", "no_such_module_here"])
        assert gc.get_freeze_count() > 0  # forked children inherit it: their collections skip the server's heap
    finally:
        gc.unfreeze()
    assert "not preloaded no_such_module_here: ModuleNotFoundError" in capsys.readouterr().err

