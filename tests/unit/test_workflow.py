"""Workflows without a database: the options, parent_results in a task, and the graph's layout."""

from __future__ import annotations

import uuid

import pytest

import tasklib
from tasklib.graph import Graph, Node, lay_out
from tasklib.submit import SubmitOptions
from tasklib.worker.child import run_one
from tasklib.worker.messages import Run, TaskOrder, decode_available, encode
from tasklib.workflow import running_with


def test_depends_on_is_validated_and_deduplicated() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    opts, kwargs = SubmitOptions.split({"x": 1, "depends_on": [str(a), b, a]})
    assert opts.depends_on == [a, b] and kwargs == {"x": 1}
    assert SubmitOptions.split({"depends_on": []})[0].depends_on is None
    for bad in ({"depends_on": ["nope"]}, {"depends_on": [a], "unique_key": "k"}, {"on_parent_failure": "maybe"}):
        with pytest.raises(tasklib.ValidationError):
            SubmitOptions.split(bad)


def test_parent_results_inside_a_task() -> None:
    parent = uuid.uuid4()
    assert tasklib.parent_results() == {}
    with running_with(f'{{"{parent}": [1, 2]}}'):
        assert tasklib.parent_results() == {parent: [1, 2]}
    assert tasklib.parent_results() == {}


@tasklib.task
def echo_parents() -> dict[str, object]:
    return {str(k): v for k, v in tasklib.parent_results().items()}


def test_a_child_hands_the_results_to_the_task_it_runs() -> None:
    from tasklib.registry import registered_definitions

    parent = uuid.uuid4()
    name = f"{__name__}.echo_parents"
    order = TaskOrder(1, name, "{}", None, f'{{"{parent}": 3}}')
    buffer = bytearray(encode(Run((order,))))
    (decoded,) = decode_available(buffer)
    assert decoded == Run((order,))  # the results travel on the pipe with the order
    status, payload = run_one(registered_definitions(), name, "{}", None, order.parent_results_json)
    assert (status, payload) == ("ok", f'{{"{parent}":3}}')


def test_the_layout_puts_each_task_below_all_its_parents() -> None:
    ids = [uuid.uuid4() for _ in range(6)]
    a, b, c, d, e, f = ids
    nodes = [
        Node(a, "a", "completed"),
        Node(b, "b", "running", (a,)),
        Node(c, "c", "pending", (a,)),
        Node(d, "d", "waiting", (b, c)),
        Node(e, "e", "waiting", (d, a)),
        Node(f, "f", "pending"),
    ]
    graph = lay_out(Graph(nodes, capped=False))
    assert [graph.layer[i] for i in ids] == [0, 1, 1, 2, 3, 0]
    assert graph.column[b] != graph.column[c] and graph.column[a] != graph.column[f]
    assert (graph.width, graph.depth) == (2, 4)
    assert set(graph.edges) == {(a, b), (a, c), (b, d), (c, d), (d, e), (a, e)}
