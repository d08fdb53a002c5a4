"""The process executor against a pool that records what it is sent: dispatch order, prefetch,
what a child's answer or death means, recall of queued jobs."""

from __future__ import annotations

import asyncio

from tasklib.states import TaskState
from tasklib.worker.children import KillReason
from tasklib.worker.executors import FAST_WINDOW, ExecutorContext, ProcessExecutor
from tasklib.worker.messages import Finished, Recall, Recalled, Run
from tasklib.worker.writer import OutcomeWriter
from tests.unit.worker.fakes import CONFIG, Clock, FakePool, finished, job, recording_kills, released, writer


def make(size: int = 2, concurrency: int = 2) -> tuple[ProcessExecutor, FakePool, OutcomeWriter, Clock]:
    out, clock, pool = writer(), Clock(), FakePool(size)
    context = ExecutorContext(None, out, asyncio.Event(), CONFIG, clock)  # type: ignore[arg-type]
    executor = ProcessExecutor(["n"], concurrency, context)
    executor.pool = pool  # type: ignore[assignment]
    return executor, pool, out, clock


def sent_seqs(pool: FakePool) -> list[int]:
    return [order.seq for _pid, message in pool.sent if isinstance(message, Run) for order in message.tasks]


def test_jobs_start_by_priority_then_due_time_then_id() -> None:
    executor, pool, _, _ = make(size=1, concurrency=1)
    executor.avg_duration = 0.001  # fast tasks: one child takes a window of several
    jobs = [job(0, 5), job(0, 1), job(7, 9), job(0, 1)]
    executor.hold(jobs)
    by_seq = {j.seq: j for j in jobs}
    order = [by_seq[seq] for seq in sent_seqs(pool)]
    assert order == sorted(jobs, key=lambda j: (-j.priority, j.scheduled_at, j.id))
    assert order[0].priority == 7


def test_slow_tasks_are_not_prefetched_and_fast_ones_are() -> None:
    executor, _, _, _ = make(size=4, concurrency=4)
    assert executor.wanted() == 4  # one per free child while tasks are slow (or unknown)
    executor.avg_duration = 0.001
    assert executor.wanted() >= FAST_WINDOW * 4


def test_child_result_becomes_an_outcome_and_frees_capacity() -> None:
    executor, pool, out, clock = make(size=1, concurrency=1)
    executor.hold([job()])
    assert executor.wanted() == 0
    child = pool.children[0]
    seq = child.outstanding[0].seq
    clock.now += 0.5
    executor.on_message(child, Finished(seq, "ok", "42"))
    ((_job, action),) = finished(out)
    assert action.state is TaskState.COMPLETED and action.result_json == "42"
    assert executor.wanted() == 1 and out.processed == 1


def test_a_timed_out_child_fails_its_task_and_requeues_the_ones_behind_it() -> None:
    executor, pool, out, clock = make(size=2, concurrency=2)
    executor.avg_duration = 0.001
    executor.hold([job(timeout=1, at=-1), job(), job()])  # the timed one is due first: it runs first
    child = next(c for c in pool.children if c.outstanding and c.outstanding[0].timeout_seconds)
    behind = list(child.outstanding)[1:]
    clock.now += 1.5
    recording_kills(child)
    executor.check()  # the watchdog's tick
    assert child.kill_reason is KillReason.TIMEOUT
    pool.children.remove(child)
    executor.on_death(child, "killed by signal SIGKILL")
    ((_, action),) = finished(out)
    assert action.state is TaskState.PENDING and "TimeoutError" in (action.error or "")  # retried by policy
    assert {j.id for j in behind} <= executor.held_ids()  # never started: still held, run elsewhere
    assert executor.jobs.queued + sum(len(c.outstanding) for c in pool.children) == len(behind)


def test_a_crash_and_a_shutdown_kill_mean_different_things() -> None:
    executor, pool, out, _ = make(size=2, concurrency=2)
    executor.hold([job(), job()])
    crashed, stopped = pool.children
    executor.on_death(crashed, "exited with code 1")
    assert "WorkerChildDied" in (finished(out)[0][1].error or "")
    stopped.kill_reason = KillReason.SHUTDOWN
    executor.on_death(stopped, "killed by signal SIGKILL")
    assert len(finished(out)) == 1 and len(released(out)) == 1  # released, no attempt counted


def test_a_lost_task_is_killed_if_running_and_recalled_if_queued() -> None:
    executor, pool, _, _ = make(size=1, concurrency=1)
    executor.avg_duration = 0.001
    running, queued = job(at=0), job(at=1)
    executor.hold([running, queued])
    child = recording_kills(pool.children[0])
    executor.stop_lost({queued.id})
    assert pool.sent[-1] == (child.pid, Recall((queued.seq,)))
    executor.on_message(child, Recalled((queued.seq,)))
    assert queued.id not in executor.held_ids() and len(executor.jobs) == 1  # dropped, never run
    executor.stop_lost({running.id})
    assert child.kill_reason is KillReason.CANCEL


def test_stopping_releases_queued_jobs_and_recalls_prefetched_ones() -> None:
    executor, pool, out, _ = make(size=1, concurrency=1)
    executor.avg_duration = 0.001
    first, second = job(at=0), job(at=1)
    executor.hold([first, second])
    child = pool.children[0]
    executor.stop()
    assert pool.sent[-1] == (child.pid, Recall((second.seq,)))
    executor.on_message(child, Recalled((second.seq,)))
    assert released(out) == [second]
    assert executor.pool.outstanding() == 1 and list(child.outstanding) == [first]
