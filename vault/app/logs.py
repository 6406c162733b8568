"""Structured JSON logs (structlog). Never log request or response bodies.

Context goes into a line by ``log.bind(...)`` (the interceptor binds the method, the
request id and the caller): oubli binds nothing to structlog's contextvars, so its
``merge_contextvars`` processor (a copy of the whole context per line) is not used."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog


def configure_logging(
    stream: TextIO = sys.stderr,
    level: int = logging.INFO,
    fields: Mapping[str, object] | None = None,
) -> None:
    """JSON lines to ``stream``; ``fields`` are added to every line (a worker process
    names itself, ``worker=1``, in every thread)."""
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        constant = dict(fields)

        def add_fields(
            _logger: object, _name: str, event: MutableMapping[str, Any]
        ) -> MutableMapping[str, Any]:
            for key, value in constant.items():
                event.setdefault(key, value)
            return event

        processors.append(add_fields)
    structlog.configure(
        processors=[*processors, structlog.processors.JSONRenderer(sort_keys=True)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
