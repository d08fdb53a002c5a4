"""The outcome writer without a database: nothing is dropped when a statement is cut off, and its
backpressure holds claims back until it has written its way back under the bound."""

from __future__ import annotations

import asyncio
from typing import Any

from tasklib.outcome import Outcome, OutcomeKind
from tasklib.worker.writer import BATCH_LIMIT, MAX_UNWRITTEN, OutcomeWriter
from tests.unit.worker.fakes import CONFIG, answer_all, finished, job

OK = Outcome(OutcomeKind.OK, result_json="1")


def test_an_outcome_is_decided_by_the_retry_policy() -> None:
    writer = OutcomeWriter(answer_all, "w", CONFIG)
    writer.complete(job(), Outcome(OutcomeKind.ERROR, error="boom"), 0.01)
    writer.complete(job(), OK, 0.01)
    (retry, _), (done, _) = [(a, j) for j, a in finished(writer)]
    assert retry.state == "pending" and retry.retry_count == 1 and retry.error == "boom"
    assert done.state == "completed" and done.result_json == "1" and writer.processed == 2


def test_the_writer_keeps_a_batch_whose_statement_was_cancelled_and_stops_between_statements() -> None:
    async def scenario() -> tuple[int, int, int]:
        started, release = asyncio.Event(), asyncio.Event()
        calls: list[str] = []

        async def execute(statement: str, params: dict[str, Any]) -> list[Any]:
            calls.append(statement)
            started.set()
            await release.wait()  # a statement in flight
            return [(task_id,) for task_id in params.get("ids", [])]

        writer = OutcomeWriter(execute, "w", CONFIG)
        writer.complete(job(), OK, 0.0)
        run = asyncio.create_task(writer.run())
        await started.wait()
        run.cancel()  # cut off mid-statement
        await asyncio.gather(run, return_exceptions=True)
        kept = len(finished(writer))  # still buffered: close() writes it
        release.set()
        await writer.close()
        written = len(calls)
        writer.complete(job(), OK, 0.0)
        run = asyncio.create_task(writer.run())
        while len(calls) < 3:  # it writes the new outcome…
            await asyncio.sleep(0.001)
        writer.stop()
        await asyncio.wait_for(run, 1)  # …and stop() ends it without a cancel
        return kept, written, len(calls)

    kept, written, total = asyncio.run(scenario())
    assert kept == 1 and written == 2 and total == 3


def test_a_full_writer_has_no_room_until_it_has_written_its_way_back() -> None:
    async def scenario() -> None:
        writer = OutcomeWriter(answer_all, "w", CONFIG)
        assert writer.has_room()
        for _ in range(MAX_UNWRITTEN - 1):
            writer.complete(job(), OK, 0.0)
        assert writer.has_room()
        writer.complete(job(), OK, 0.0)
        assert not writer.has_room()
        waiting = asyncio.create_task(writer.wait_for_room())
        await asyncio.sleep(0)
        assert not waiting.done()
        await writer.write_pending()
        await asyncio.wait_for(waiting, 1)
        assert writer.has_room() and not writer.pending
        for _ in range(MAX_UNWRITTEN + BATCH_LIMIT):
            writer.complete(job(), OK, 0.0)
        assert not writer.has_room()
        await writer.write_pending()
        assert writer.has_room()

    asyncio.run(scenario())
