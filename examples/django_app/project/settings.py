"""Settings of the TaskLib Django example: one app, its ORM on psycopg 3, the same database as TaskLib."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

#: One URL for both: Django's ORM and TaskLib share the database (and so a transaction can hold both).
TASKLIB_DATABASE_URL = os.environ.get("TASKLIB_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_url = urlsplit(TASKLIB_DATABASE_URL)

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["examples.django_app.shop"]
ROOT_URLCONF = "examples.django_app.project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when it is installed, as here
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
    }
}
