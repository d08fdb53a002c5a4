"""Flask + SQLAlchemy with TaskLib: the task is written in the request's own session transaction,
so it exists only if the order it is about was committed.

    TASKLIB_DATABASE_URL=postgresql://… flask --app examples.flask_app.app run
    tasklib worker --app examples.flask_app.tasks
"""

from __future__ import annotations

import os

from flask import Flask, abort, jsonify, request
from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import tasklib
from examples.flask_app.tasks import ship_order


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item: Mapped[str] = mapped_column(String(200))


def create(database_url: str | None = None) -> Flask:
    url = database_url or os.environ["TASKLIB_DATABASE_URL"]
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    Base.metadata.create_all(engine)
    tasklib.init(tasklib.Config(database_url=url))
    app = Flask(__name__)

    @app.post("/orders")
    def place_order():  # type: ignore[no-untyped-def]
        item = request.args.get("item") or abort(400)
        with Session(engine) as session, session.begin():  # one transaction: the order and its task
            order = Order(item=item)
            session.add(order)
            session.flush()  # the order's id, inside the transaction
            order_id = order.id
            task_id = tasklib.submit_task_in(session, ship_order, order_id=order_id)
            if request.args.get("fail"):  # something later in the request goes wrong
                raise RuntimeError("payment declined")
        return jsonify(order_id=order_id, task_id=str(task_id))

    @app.errorhandler(RuntimeError)
    def failed(exc: RuntimeError):  # type: ignore[no-untyped-def]
        return jsonify(error=str(exc)), 402

    return app
