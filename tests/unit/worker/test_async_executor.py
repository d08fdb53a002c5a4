"""The async executor against a pool that records what it is sent: many jobs per child, answers in
any order, two-step timeouts and cancels, what a child's death means for each job it held."""

from __future__ import annotations

import asyncio

import pytest

from tasklib.states import TaskState
from tasklib.worker.async_executor import AsyncExecutor, async_children
from tasklib.worker.children import KillReason
from tasklib.worker.executors import ExecutorContext
from tasklib.worker.messages import Cancel, Finished, Run
from tasklib.worker.writer import OutcomeWriter
from tests.unit.worker.fakes import CONFIG, Clock, FakePool, finished, job, recording_kills, released, writer


def make(children: int = 2, slots: int = 20) -> tuple[AsyncExecutor, FakePool, OutcomeWriter, Clock]:
    out, clock, pool = writer(), Clock(), FakePool(children)
    context = ExecutorContext(None, out, asyncio.Event(), CONFIG, clock)  # type: ignore[arg-type]
    executor = AsyncExecutor(["n"], slots, context, children=children)
    executor.pool = pool  # type: ignore[assignment]
    return executor, pool, out, clock


def test_async_children_follow_the_slots_up_to_the_cores() -> None:
    assert async_children(0) == 0
    assert [async_children(n, cpus=2) for n in (1, 100, 101, 200, 1000)] == [1, 1, 2, 2, 2]
    assert async_children(1000, cpus=8) == 8 and async_children(300, cpus=1) == 2


def test_async_jobs_all_start_at_once_spread_over_children() -> None:
    executor, pool, _, _ = make(children=2, slots=20)
    assert executor.wanted() == 20
    executor.hold([job(timeout=7) for _ in range(25)])
    assert sorted(len(c.outstanding) for c in pool.children) == [10, 10]  # 10 slots each, all running
    assert executor.jobs.queued == 5 and executor.wanted() == 0
    assert all(isinstance(message, Run) for _pid, message in pool.sent)
    assert {order.timeout_seconds for _pid, message in pool.sent for order in message.tasks} == {7}


def test_async_results_arrive_in_any_order_and_free_their_slot() -> None:
    executor, pool, out, _ = make(children=1, slots=3)
    first, second, third, waiting = job(at=0), job(at=1), job(at=2), job(at=3)
    executor.hold([first, second, third, waiting])
    child = pool.children[0]
    executor.on_message(child, Finished(third.seq, "ok", "3"))
    executor.on_message(child, Finished(first.seq, "timeout", "TimeoutError: …"))
    assert [j for j, _ in finished(out)] == [third, first]
    assert finished(out)[1][1].state is TaskState.PENDING  # a timeout is retried by policy
    assert list(child.outstanding) == [second, waiting]  # the queued one took a freed slot


def test_an_uncancellable_async_task_kills_its_child_and_only_it_is_charged() -> None:
    executor, pool, out, clock = make(children=1, slots=10)
    stubborn, bystander, cancelled = job(at=0, timeout=1), job(at=1), job(at=2)
    executor.hold([stubborn, bystander, cancelled])
    child = recording_kills(pool.children[0])
    executor.stop_lost({cancelled.id})
    assert pool.sent[-1] == (child.pid, Cancel((cancelled.seq,)))  # asked, not killed
    clock.now += 1.5
    executor.check()
    assert child.kill_reason is None  # the child cancels at the timeout itself; this is the grace
    clock.now += 2.0
    executor.check()
    assert child.kill_reason is KillReason.TIMEOUT and stubborn.overdue
    pool.children.remove(child)
    executor.on_death(child, "killed by signal SIGKILL")
    ((charged, action),) = finished(out)
    assert charged is stubborn and "did not stop when cancelled" in (action.error or "")
    assert released(out) == [bystander]  # back to pending, no attempt counted; the cancelled one dropped
    assert len(executor.jobs) == 0


def test_a_cancel_that_is_ignored_kills_the_child_after_the_grace() -> None:
    executor, pool, out, clock = make(children=1, slots=10)
    target, bystander = job(), job()
    executor.hold([target, bystander])
    child = recording_kills(pool.children[0])
    executor.stop_lost({target.id})
    clock.now += 2.5
    executor.check()
    assert child.kill_reason is KillReason.CANCEL
    executor.on_death(child, "killed by signal SIGKILL")
    assert finished(out) == [] and released(out) == [bystander]


def test_an_async_child_that_crashes_charges_every_task_it_held() -> None:
    executor, pool, out, _ = make(children=1, slots=10)
    executor.hold([job(), job(), job()])
    executor.on_death(pool.children[0], "exited with code 3")
    assert len(finished(out)) == 3 and not released(out)
    assert all(
        "WorkerChildDied" in (action.error or "") and "2 other(s)" in (action.error or "") for _, action in finished(out)
    )


def test_a_few_free_async_slots_are_claimed_after_a_short_wait_not_a_whole_wave() -> None:
    executor, pool, _, clock = make(children=1, slots=20)
    jobs = [job() for _ in range(20)]
    executor.hold(jobs)
    executor.on_message(pool.children[0], Finished(jobs[0].seq, "ok", "null"))
    assert executor.wanted() == 0  # one free slot of 20: wait for others to free up
    assert executor.recheck_in() == pytest.approx(0.05)  # …but the claim loop comes back for it
    clock.now += 0.06
    assert executor.wanted() == 1
    executor.hold([job()])
    assert executor.recheck_in() is None
