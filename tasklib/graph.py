"""The read model of workflows: a task's parents and children, the graph around it, and its layout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from tasklib import sql
from tasklib.db import Database

#: Most tasks the workflow page draws (a fan-out of thousands is summarised, not drawn).
GRAPH_CAP = 300


@dataclass(frozen=True)
class Node:
    id: uuid.UUID
    name: str
    state: str
    parents: tuple[uuid.UUID, ...] = ()
    waiting_for: int | None = None


@dataclass
class Graph:
    """Nodes in creation order, each with its layer (longest path from a root) and place in it."""

    nodes: list[Node]
    capped: bool
    layer: dict[uuid.UUID, int] = field(default_factory=dict)
    column: dict[uuid.UUID, int] = field(default_factory=dict)
    widths: dict[int, int] = field(default_factory=dict)  # tasks per layer

    @property
    def edges(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        known = {n.id for n in self.nodes}
        return [(p, n.id) for n in self.nodes for p in n.parents if p in known]

    @property
    def width(self) -> int:
        return max(self.column.values(), default=0) + 1

    @property
    def depth(self) -> int:
        return max(self.layer.values(), default=0) + 1

    def slot(self, task_id: uuid.UUID) -> float:
        """Where a task sits across its layer, in columns: each layer centred on the widest."""
        return self.column[task_id] + (self.width - self.widths[self.layer[task_id]]) / 2

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.nodes:
            out[node.state] = out.get(node.state, 0) + 1
        return out


def relatives(db: Database, task_id: uuid.UUID, parent_ids: list[uuid.UUID] | None) -> tuple[list[Node], list[Node]]:
    """(parents, children) of one task, for its page."""
    parents = (
        [Node(r["id"], r["name"], r["state"]) for r in db.rows(sql.PARENTS_OF, {"ids": parent_ids})] if parent_ids else []
    )
    children = [Node(r["id"], r["name"], r["state"]) for r in db.rows(sql.CHILDREN_OF, {"id": task_id})]
    return parents, children


def workflow(db: Database, task_id: uuid.UUID, cap: int = GRAPH_CAP) -> Graph:
    rows = db.rows(sql.WORKFLOW, {"id": task_id, "cap": cap + 1})
    nodes = [Node(r["id"], r["name"], r["state"], tuple(r["parent_ids"] or ()), r["waiting_for"]) for r in rows[:cap]]
    return lay_out(Graph(nodes, capped=len(rows) > cap))


def lay_out(graph: Graph) -> Graph:
    """Layers by longest path from a root (nodes come parents first: a child is created after its
    parents), columns in creation order within a layer."""
    for node in graph.nodes:
        graph.layer[node.id] = 1 + max((graph.layer[p] for p in node.parents if p in graph.layer), default=-1)
    for node in graph.nodes:
        layer = graph.layer[node.id]
        graph.column[node.id] = graph.widths.get(layer, 0)
        graph.widths[layer] = graph.column[node.id] + 1
    return graph
