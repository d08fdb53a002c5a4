"""Which statements are prepared: those whose plan cannot depend on the data."""

from __future__ import annotations


class Prepared(str):
    """A statement whose plan cannot depend on the data: it reads no table, so there is no access
    path to choose (a one-row INSERT). TaskLib's connections prepare it on first use and keep its
    plan for the session. Every other statement is planned afresh each time, for the table as it is
    now; even an UPDATE by primary key can be given another index by a plan made while the table
    was empty (docs/design/plans.md)."""

    __slots__ = ()


def prepare(statement: str) -> bool | None:
    """psycopg's ``prepare=`` for ``statement``: True for a ``Prepared`` one, else psycopg's choice,
    which TaskLib's connections set to never (``tasklib.db.connect_kwargs``)."""
    return True if isinstance(statement, Prepared) else None
