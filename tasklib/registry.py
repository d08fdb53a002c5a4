"""The task registry: ``@task``, stable names, and argument validation compiled once per function."""

from __future__ import annotations

import inspect
import json
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NotRequired, ParamSpec, TypeVar, overload

import pydantic
import pydantic_core
from typing_extensions import TypedDict

from tasklib.errors import TaskNotRegistered, ValidationError, problems_of, summary_of
from tasklib.limits import DEFAULT_QUEUE, Rate, check_limit, check_queue

if TYPE_CHECKING:
    from tasklib.schedules import Schedule

P = ParamSpec("P")
R = TypeVar("R")

_REGISTRY: dict[str, TaskDefinition] = {}

# The stored kwargs must be JSON; this rejects what JSON cannot carry (sets, bytes, objects).
_JSON_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(pydantic.JsonValue)


def module_name_of(func: Callable[..., Any]) -> str:
    """The importable module name of ``func``.

    Functions defined in the script being run live in ``__main__`` (or ``__mp_main__`` in a child
    process). They are named after the script (``python jobs.py`` -> ``jobs``) or the module given to
    ``python -m``, so a worker that imports that file as a module registers the same names.
    """
    module = func.__module__
    if module not in ("__main__", "__mp_main__"):
        return module
    main = sys.modules.get(module)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name not in ("__main__", "__mp_main__"):
        return str(spec.name)
    path = getattr(main, "__file__", None)
    if path:
        return os.path.splitext(os.path.basename(path))[0]
    return "__main__"


@dataclass(frozen=True)
class TaskDefinition:
    """A registered task function and how to validate its arguments."""

    name: str
    func: Callable[..., Any]
    max_retries: int | None = None
    timeout_seconds: int | None = None
    accepts_extra: bool = False
    field_names: frozenset[str] = frozenset()
    _adapter: pydantic.TypeAdapter[Any] = field(repr=False, default=None)  # type: ignore[assignment]
    _args_type: Any = field(repr=False, default=None, compare=False)  # the TypedDict _adapter validates
    _list_adapter: pydantic.TypeAdapter[Any] | None = field(repr=False, default=None, compare=False)
    #: When the task recurs (``cron=`` / ``every=``), else None.
    schedule: Schedule | None = None
    #: How much memory an attempt may allocate in its child (MB), else the worker's default.
    memory_limit_mb: int | None = None
    #: The queue its tasks go to unless a submit names another (``queue=``).
    queue: str = DEFAULT_QUEUE
    #: At most this many running at once across every worker, else None.
    concurrency_limit: int | None = None
    #: At most so many starts per period across every worker, spread evenly, else None.
    rate_limit: Rate | None = None

    @property
    def limited(self) -> bool:
        """Whether each claim of it must be counted against a limit (``tasklib.worker.sources``)."""
        return self.concurrency_limit is not None or self.rate_limit is not None

    def validate(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate call arguments; return their JSON form. Raise ValidationError naming each field."""
        known, extra = self._split(kwargs)
        try:
            validated = self._adapter.validate_python(known)
            payload: dict[str, Any] = self._adapter.dump_python(validated, mode="json")
        except pydantic.ValidationError as exc:
            raise _validation_error(self.name, exc) from None
        except pydantic_core.PydanticSerializationError as exc:
            raise ValidationError(f"{self.name}: arguments cannot be stored as JSON: {exc}") from None
        for key, value in extra.items():
            try:
                payload[key] = _JSON_ADAPTER.validate_python(pydantic_core.to_jsonable_python(value))
            except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as exc:
                raise ValidationError(
                    f"{self.name}: argument {key!r} cannot be stored as JSON ({type(value).__name__})",
                    [{"field": key, "message": str(exc).splitlines()[0]}],
                ) from None
        return payload

    def validate_many(self, items: list[dict[str, Any]]) -> list[str]:
        """Validate many calls at once; return each call's arguments as JSON text.

        The whole list goes through pydantic-core in one call (the per-item Python cost is what
        limits bulk submit); errors name the item and the field.
        """
        if self.accepts_extra:
            encoded_items = []
            for index, item in enumerate(items):
                try:
                    encoded_items.append(dumps_json(self.validate(item)))
                except (ValidationError, ValueError) as exc:
                    raise _item_error(index, exc) from None
            return encoded_items
        if self._list_adapter is None:
            object.__setattr__(self, "_list_adapter", pydantic.TypeAdapter(list[self._args_type]))  # type: ignore[name-defined]
        try:
            validated = self._list_adapter.validate_python(items)
            encoded = [
                pydantic_core.to_json(item).decode() for item in self._list_adapter.dump_python(validated, mode="json")
            ]
        except pydantic.ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            index = int(first["loc"][0]) if first["loc"] else 0
            try:
                self.validate(items[index])  # the single-item error names the fields
            except ValidationError as single:
                raise _item_error(index, single) from None
            raise _item_error(index, ValidationError(str(exc))) from None
        except pydantic_core.PydanticSerializationError as exc:
            raise ValidationError(f"{self.name}: arguments cannot be stored as JSON: {exc}") from None
        for index, text in enumerate(encoded):
            try:
                refuse_nul(text, f"{self.name}: an argument")
            except ValueError as exc:
                raise _item_error(index, ValidationError(str(exc))) from None
        return encoded

    def load(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Turn stored JSON arguments back into the annotated Python types (in the worker)."""
        known, extra = self._split(payload)
        try:
            validated: dict[str, Any] = self._adapter.validate_python(known)
        except pydantic.ValidationError as exc:
            raise _validation_error(self.name, exc) from None
        validated.update(extra)
        return validated

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.accepts_extra:
            return kwargs, {}
        names = self.field_names
        known = {k: v for k, v in kwargs.items() if k in names}
        return known, {k: v for k, v in kwargs.items() if k not in names}


def _item_error(index: int, exc: Exception) -> ValidationError:
    errors = [{**e, "item": index} for e in getattr(exc, "errors", [])]
    return ValidationError(f"item {index}: {exc}", errors)


def _validation_error(task_name: str, exc: pydantic.ValidationError) -> ValidationError:
    problems = problems_of(exc)
    return ValidationError(f"invalid arguments for task {task_name}: {summary_of(problems)}", problems)


def _build_adapter(func: Callable[..., Any]) -> tuple[Any, pydantic.TypeAdapter[Any], bool, frozenset[str]]:
    """A TypedDict adapter mirroring the function's keyword parameters (extra keys forbidden)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolved forward references: validate those parameters as Any
        hints = {}
    fields: dict[str, Any] = {}
    accepts_extra = False
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            accepts_extra = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            if param.kind is param.POSITIONAL_ONLY and param.default is param.empty:
                raise TypeError(
                    f"task {func.__qualname__}: positional-only parameter {param.name!r} "
                    "cannot be passed by keyword; tasks take keyword arguments"
                )
            continue
        annotation = hints.get(param.name, Any)
        fields[param.name] = annotation if param.default is param.empty else NotRequired[annotation]
    typed_dict = TypedDict(f"{func.__qualname__}_args", fields)  # type: ignore[operator]
    typed_dict.__pydantic_config__ = pydantic.ConfigDict(  # type: ignore[attr-defined]
        extra="forbid", arbitrary_types_allowed=True
    )
    return typed_dict, pydantic.TypeAdapter(typed_dict), accepts_extra, frozenset(fields)


@overload
def task(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def task(
    *,
    max_retries: int | None = None,
    timeout_seconds: int | None = None,
    name: str | None = None,
    cron: str | None = None,
    every: float | timedelta | None = None,
    timezone: str | None = None,
    schedule_kwargs: Mapping[str, Any] | None = None,
    catch_up: bool = False,
    memory_limit_mb: int | None = None,
    queue: str = DEFAULT_QUEUE,
    concurrency_limit: int | None = None,
    rate_limit: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def task(
    func: Callable[P, R] | None = None,
    /,
    *,
    max_retries: int | None = None,
    timeout_seconds: int | None = None,
    name: str | None = None,
    cron: str | None = None,
    every: float | timedelta | None = None,
    timezone: str | None = None,
    schedule_kwargs: Mapping[str, Any] | None = None,
    catch_up: bool = False,
    memory_limit_mb: int | None = None,
    queue: str = DEFAULT_QUEUE,
    concurrency_limit: int | None = None,
    rate_limit: str | None = None,
) -> Any:
    """Register a function (sync, or ``async def``) as a task. The function stays directly callable.

    Its name is ``module.qualname`` unless ``name=`` is given. ``cron=`` (5 fields, or 6 with
    seconds) or ``every=`` (seconds or a timedelta) makes it recurring: every worker that has it
    registered schedules its slots, one row per slot (``tasklib.schedules``), each run getting
    ``schedule_kwargs``, validated here like a submit's arguments.

    ``queue`` is the queue its tasks go to (workers serve named queues); ``concurrency_limit`` caps
    how many run at once and ``rate_limit`` (``"20/s"``, ``"100/m"``, ``"500/h"``) how often one
    starts, both across every worker (docs/queues.md).
    """
    if max_retries is not None and max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    if timeout_seconds is not None and timeout_seconds < 1:
        raise ValueError("timeout_seconds must be >= 1")
    if memory_limit_mb is not None and (isinstance(memory_limit_mb, bool) or memory_limit_mb < 16):
        raise ValueError("memory_limit_mb must be at least 16")
    check_queue(queue)
    check_limit(concurrency_limit)
    rate = None if rate_limit is None else Rate.parse(rate_limit)
    schedule = None
    if cron is not None or every is not None:
        from tasklib.schedules import Schedule

        schedule = Schedule.build(cron, every, timezone, catch_up)
    elif timezone is not None or schedule_kwargs is not None or catch_up:
        raise ValueError("timezone, schedule_kwargs and catch_up need a schedule: give cron= or every=")

    def register(fn: Callable[P, R]) -> Callable[P, R]:
        task_name = name or f"{module_name_of(fn)}.{fn.__qualname__}"
        args_type, adapter, accepts_extra, names = _build_adapter(fn)
        definition = TaskDefinition(task_name, fn, max_retries, timeout_seconds, accepts_extra, names, adapter, args_type)
        if memory_limit_mb is not None:
            definition = replace(definition, memory_limit_mb=int(memory_limit_mb))
        definition = replace(definition, queue=queue, concurrency_limit=concurrency_limit, rate_limit=rate)
        if schedule is not None:
            kwargs = definition.validate(dict(schedule_kwargs or {}))  # ValidationError now, not at 3 a.m.
            definition = replace(definition, schedule=schedule.with_kwargs(kwargs))
        _REGISTRY[task_name] = definition
        fn.__tasklib_name__ = task_name  # type: ignore[attr-defined]
        return fn

    return register(func) if func is not None else register


def registered_queues(definitions: Mapping[str, TaskDefinition] | None = None) -> list[str]:
    """The queues the registered tasks (or ``definitions``) name, ``default`` when there are none:
    what a worker serves, and ``testing.drain`` runs, unless told otherwise."""
    found = {d.queue for d in (_REGISTRY if definitions is None else definitions).values()}
    return sorted(found or {DEFAULT_QUEUE})


def definition_for(func_or_name: Callable[..., Any] | str) -> TaskDefinition:
    """The registered definition for a task function or name."""
    name = func_or_name if isinstance(func_or_name, str) else getattr(func_or_name, "__tasklib_name__", None)
    if name is None:
        raise TaskNotRegistered(
            f"{getattr(func_or_name, '__qualname__', func_or_name)!r} is not a task: decorate it with @tasklib.task"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TaskNotRegistered(f"no task named {name!r} is registered in this process") from None


def get_registered_tasks() -> dict[str, Callable[..., Any]]:
    """All registered tasks: ``{name: function}``."""
    return {name: d.func for name, d in _REGISTRY.items()}


def registered_definitions() -> dict[str, TaskDefinition]:
    """All registered task definitions (for the worker)."""
    return dict(_REGISTRY)


def resolve_names(name: str) -> list[str]:
    """Names a ``name=`` filter means: itself, plus registered tasks whose short name it is."""
    names = [name]
    if "." not in name:
        names += [n for n in _REGISTRY if n.rsplit(".", 1)[-1] == name]
    return names


def refuse_nul(json_text: str, what: str = "JSON text") -> str:
    """``json_text`` unchanged, or ValueError if it holds a NUL character: PostgreSQL's jsonb (and
    text) cannot store one, and finding out at INSERT time would lose the whole batch."""
    if "\\u0000" in json_text:
        raise ValueError(f"{what} contains a NUL character (\\u0000), which PostgreSQL's jsonb refuses")
    return json_text


def dumps_json(value: Any) -> str:
    """Serialise to JSON text PostgreSQL's jsonb accepts."""
    return refuse_nul(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
