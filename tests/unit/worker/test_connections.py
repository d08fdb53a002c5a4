from __future__ import annotations

from tasklib.worker.connections import submit_note


def test_a_submit_notification_carries_its_time_and_priority() -> None:
    assert submit_note("app.send_email 1764590400.25 -3") == (1764590400.25, -3)
    assert submit_note("app.send_email 1764590400.25") == (1764590400.25, None)  # an older submitter
    assert submit_note("my job 5 1764590400.25") == (1764590400.25, None)  # a name with spaces, old form
    assert submit_note("my job 1764590400.25 2") == (1764590400.25, 2)
    assert submit_note("garbage") == (None, None)


def test_a_submit_note_names_its_task() -> None:
    from tasklib.worker.connections import Submitted

    assert Submitted.of("app.send_email 1764590400.25 -3") == Submitted(1764590400.25, -3, "app.send_email", "default")
    assert Submitted.of("app.send_email @emails 1764590400.25 0") == Submitted(1764590400.25, 0, "app.send_email", "emails")
    assert Submitted.of("my job @a.b 1764590400.25").queue == "a.b"  # a freed slot's note: no priority
    assert Submitted.of("my job 1764590400.25 2").name == "my job"
    assert Submitted.of("app.old 1764590400.25").name == "app.old"
    assert Submitted.of("garbage") == Submitted()
