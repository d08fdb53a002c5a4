"""FastAPI with TaskLib: submit from a request handler, the dashboard mounted under /tasklib.

Run it (with $TASKLIB_DATABASE_URL set, or the embedded PostgreSQL):

    uvicorn examples.fastapi_app.main:app --port 8000
    tasklib worker --app examples.fastapi_app.tasks

then POST /signup?email=a@example.com and open http://127.0.0.1:8000/tasklib/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException

import tasklib
from dashboard.app import create_app
from examples.fastapi_app.tasks import send_welcome

config = tasklib.Config()  # $TASKLIB_DATABASE_URL, else the embedded PostgreSQL


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    tasklib.init(config)
    yield


app = FastAPI(title="Shop", lifespan=lifespan)


@app.post("/signup")
async def signup(email: str, name: str = "there") -> dict[str, str]:
    try:
        task_id = await tasklib.submit_task(send_welcome, email=email, name=name)
    except tasklib.ValidationError as exc:
        raise HTTPException(status_code=422, detail=exc.errors) from None
    return {"task_id": str(task_id)}


@app.get("/signup/{task_id}")
def signup_status(task_id: str) -> dict[str, object]:
    task = tasklib.get_task(task_id)
    if task is None:
        raise HTTPException(status_code=404, detail="no such task")
    return {"state": task.state, "result": task.result}


# The dashboard is a Litestar app of its own (its own pool, CSRF, templates); mounted here, every
# link, form and htmx poll it renders starts with /tasklib (from the ASGI root_path).
app.mount("/tasklib", create_app(config))
