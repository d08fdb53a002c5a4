from __future__ import annotations

from tasklib.worker.messages import Cancel, Finished, Ready, Recall, Recalled, Run, TaskOrder, decode_available, encode


def test_frames_survive_partial_reads_and_keep_their_types() -> None:
    sent = [
        Run((TaskOrder(1, "n", "{}"), TaskOrder(2, "m", "[]", 5))),
        Finished(1, "ok", "2"),
        Recall((2,)),
        Recalled((2,)),
        Cancel((3, 4)),
        Ready(99),
    ]
    data = b"".join(encode(message) for message in sent)
    buffer = bytearray()
    messages = []
    for i in range(len(data)):
        buffer += data[i : i + 1]
        messages += decode_available(buffer)
    assert messages == sent
    assert [type(m) for m in messages] == [type(m) for m in sent]
    assert type(messages[0].tasks[1]) is TaskOrder
    assert buffer == b""
