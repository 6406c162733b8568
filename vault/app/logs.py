"""Structured JSON logs (structlog). Never log request or response bodies.

Context goes into a line by ``log.bind(...)`` (the interceptor binds the method, the
request id and the caller): oubli binds nothing to structlog's contextvars, so its
``merge_contextvars`` processor (a copy of the whole context per line) is not used."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
