"""The list queries of the read model: filters, keyset pages and tag walks over the tasks table.

``tasklib.monitor`` (the dashboard's lists) and ``tasklib.actions`` (bulk retry and cancel of a
filter's matches) build their statements here. Values are always bound parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from tasklib.sql import COLUMNS
from tasklib.states import TaskState

#: The tag filter (``tags_tagged_idx`` can answer it), on ``%(f_tag_key)s`` and ``%(f_tag_value)s``.
_TAG = "tags @> jsonb_build_object(%(f_tag_key)s::text, %(f_tag_value)s::text)"


def filter_clause(
    *,
    state: str | None = None,
    name: str | None = None,
    tag: tuple[str, str] | None = None,
    text: str | None = None,
    created_from: object = None,
    created_to: object = None,
    finished_from: object = None,
    finished_to: object = None,
    cursor: tuple[object, object] | None = None,
    cursor_op: str = "<",
    states: tuple[str, ...] | None = None,
    names: tuple[str, ...] | None = None,
    queue: str | None = None,
    kwargs: str | None = None,
) -> tuple[str, dict[str, object]]:
    """A WHERE clause and its parameters for the dashboard's filters. Values are always bound.
    ``kwargs`` is a JSON object (text) the task's arguments must contain (``@>``)."""
    clauses: list[str] = []
    params: dict[str, object] = {}
    for condition, key, value in (
        ("state = %(f_state)s", "f_state", state),
        ("state = ANY(%(f_states)s)", "f_states", None if states is None else list(states)),
        ("name = %(f_name)s", "f_name", name),
        ("name = ANY(%(f_names)s)", "f_names", None if names is None else list(names)),
        ("queue = %(f_queue)s", "f_queue", queue),
        ("kwargs @> CAST(%(f_kwargs)s AS jsonb)", "f_kwargs", kwargs),
    ):
        if value is not None:
            clauses.append(condition)
            params[key] = value
    if tag is not None:
        clauses.append(_TAG)
        params["f_tag_key"], params["f_tag_value"] = tag
    if text:
        clauses.append("(error ILIKE %(f_text)s OR kwargs::text ILIKE %(f_text)s OR result::text ILIKE %(f_text)s)")
        params["f_text"] = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    for column, op, key, value in (
        ("created_at", ">=", "f_cfrom", created_from),
        ("created_at", "<", "f_cto", created_to),
        ("completed_at", ">=", "f_ffrom", finished_from),
        ("completed_at", "<", "f_fto", finished_to),
    ):
        if value is not None:
            clauses.append(f"{column} {op} %({key})s")
            params[key] = value
    if cursor is not None:
        op = "<" if cursor_op == "<" else ">"  # never interpolate anything but these two
        clauses.append(f"(created_at, id) {op} (%(c_at)s, %(c_id)s)")
        params["c_at"], params["c_id"] = cursor
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


#: How many rows of each branch (a state, or a name and a state) a tag-filtered page reads in
#: created order before it leaves the page to the tag index instead (``tag_walk_query``).
TAG_WALK_ROWS = 10_000


def page_query(
    *,
    descending: bool = True,
    cursor: tuple[object, object] | None = None,
    name: str | None = None,
    names: Iterable[str] | None = None,
    state: str | None = None,
    states: Iterable[str] | None = None,
    **filters: Any,
) -> tuple[str, dict[str, object]]:
    """One keyset page (``%(limit)s`` rows in created order, after ``cursor``) of the tasks matching
    the filters (``filter_clause``'s keywords).

    The page is read per state (tasks_state_created_idx), or per (name, state) pair with a name
    filter (tasks_name_state_created_idx), each range in created order with its own LIMIT, and the
    pieces merged: at most states (x names) short index walks, however many rows the others hold.
    There is no index on created order alone: every claim and every outcome would add an entry
    to it (three per task), and five short walks read the same page (see models.Task).

    With a tag filter this is the tag index's query: every row holding the tag, sorted once. It
    costs what the tag's rows do, wherever they are, so the dashboard first tries
    ``tag_walk_query``, which costs what the page does, and uses this one when that cannot tell.
    """
    order = "created_at DESC, id DESC" if descending else "created_at ASC, id ASC"
    op = "<" if descending else ">"
    if filters.get("tag") is not None:
        names = None if names is None else tuple(names)
        states = None if states is None else tuple(states)
        where, params = filter_clause(
            cursor=cursor, cursor_op=op, name=name, names=names, state=state, states=states, **filters
        )
        return f"SELECT {COLUMNS} FROM tasks {where} ORDER BY {order} LIMIT %(limit)s", params
    where, params = filter_clause(cursor=cursor, cursor_op=op, **filters)
    branches = [
        f"SELECT {COLUMNS} FROM tasks {_and(where, pair)} ORDER BY {order} LIMIT %(limit)s"
        for pair in _branch_pairs(params, name, names, state, states)
    ]
    if not branches:  # an empty list of names or states matches nothing
        return f"SELECT {COLUMNS} FROM tasks WHERE false LIMIT %(limit)s", params
    if len(branches) == 1:
        return branches[0], params
    union = " UNION ALL ".join(f"({b})" for b in branches)
    return f"SELECT * FROM ({union}) AS page ORDER BY {order} LIMIT %(limit)s", params


def tag_walk_query(
    *, descending: bool = True, cursor: tuple[object, object] | None = None, tag: tuple[str, str], **filters: Any
) -> tuple[str, dict[str, object]]:
    """A tag-filtered page read like any other list: per state (and name), in created order, but
    each walk stops after ``TAG_WALK_ROWS`` rows, so a tag that none of a state's recent rows hold
    costs that many rows, not the state's whole history.

    Rows are ``COLUMNS`` plus ``walk_row`` (the row's place in its walk, from 1) and
    ``walk_matched``: each branch returns its first ``%(limit)s`` rows that hold the tag, and
    also the walk's last row if the walk got that far before finding them, so the caller can tell
    whether the merged page is complete (``tasklib.monitor.merge_tag_walks``).
    """
    order = "created_at DESC, id DESC" if descending else "created_at ASC, id ASC"
    branch = {key: filters.pop(key, None) for key in ("name", "names", "state", "states")}  # (page_query's)
    where, params = filter_clause(cursor=cursor, cursor_op="<" if descending else ">", **filters)
    params["f_tag_key"], params["f_tag_value"] = tag
    params["walk_rows"] = TAG_WALK_ROWS
    branches = [
        f"SELECT {COLUMNS}, walk_row, {_TAG} AS walk_matched FROM ("
        f" SELECT *, row_number() OVER (ORDER BY {order}) AS walk_row FROM ("
        f"  SELECT * FROM tasks {_and(where, pair)} ORDER BY {order} LIMIT %(walk_rows)s) AS walk) AS numbered"
        f" WHERE {_TAG} OR walk_row = %(walk_rows)s ORDER BY {order} LIMIT %(limit)s"
        for pair in _branch_pairs(params, **branch)
    ]
    if not branches:
        return f"SELECT {COLUMNS}, 0 AS walk_row, true AS walk_matched FROM tasks WHERE false", params
    return " UNION ALL ".join(f"({b})" for b in branches), params


def _branch_pairs(
    params: dict[str, object],
    name: str | None,
    names: Iterable[str] | None,
    state: str | None,
    states: Iterable[str] | None,
) -> list[str]:
    """One condition per index range a list reads: each state, or each (name, state) pair. Binds
    their values into ``params``."""
    wanted_names: list[str | None] = [name] if name is not None else list(names) if names is not None else [None]
    wanted_states = [state] if state is not None else list(states) if states is not None else list(TaskState)
    pairs = []
    for i, (branch_name, branch_state) in enumerate(itertools.product(wanted_names, wanted_states)):
        params[f"b{i}_state"] = str(branch_state)
        pair = f"state = %(b{i}_state)s"
        if branch_name is not None:
            params[f"b{i}_name"] = branch_name
            pair = f"name = %(b{i}_name)s AND {pair}"
        pairs.append(pair)
    return pairs


def _and(where: str, condition: str) -> str:
    return f"{where} AND {condition}" if where else f"WHERE {condition}"
