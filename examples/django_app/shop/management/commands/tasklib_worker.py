"""``python manage.py tasklib_worker``: a TaskLib worker on the project's database."""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

import tasklib
from tasklib.worker import TaskWorker

TASK_MODULES = ["examples.django_app.shop.tasks"]


class Command(BaseCommand):
    help = "Run a TaskLib worker for this project's tasks (Ctrl+C or SIGTERM stops it gracefully)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args: Any, **options: Any) -> None:
        import importlib

        for module in TASK_MODULES:
            importlib.import_module(module)
        config = tasklib.Config(database_url=settings.TASKLIB_DATABASE_URL)
        asyncio.run(TaskWorker(config, concurrency=options["concurrency"], modules=TASK_MODULES).run())
