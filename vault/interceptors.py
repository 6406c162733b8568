"""Server interceptor: malformed requests, error translation and access logs.

- A request that does not parse (e.g. invalid UTF-8 in a string field) is answered
  INVALID_ARGUMENT instead of grpc's default INTERNAL "Exception deserializing request".
- Domain errors become statuses through :mod:`vault.grpc_errors`; any other exception
  becomes INTERNAL with a generic message (its text could hold anything) and is logged
  by type only.
- One structured log line per RPC: method, status, duration, request id. Never a
  request or response body.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from vault.errors import OubliError
from vault.grpc_errors import error_status, plain_status, status_code_for

log = structlog.get_logger("oubli.rpc")

REQUEST_ID_HEADER = "x-request-id"
OWN_PREFIX = "/oubli."


class _Malformed:
    """Stands in for a request that failed to parse."""


_MALFORMED = _Malformed()


def _safe_deserializer(
    deserialize: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except (DecodeError, UnicodeDecodeError, ValueError):
            return _MALFORMED

    return parse


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if (
            key == REQUEST_ID_HEADER
            and isinstance(value, str)
            and len(value) <= 64
            and value.replace("-", "").isalnum()
        ):
            return value
    return uuid.uuid4().hex


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # grpc's runtime class is not generic
    _Interceptor = grpc.ServerInterceptor


class ServiceInterceptor(_Interceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        # Only oubli's own services: health and reflection handle their own errors.
        if handler is None or handler.request_streaming or not method.startswith(OWN_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _fail(self, context: grpc.ServicerContext, error: BaseException, bound: Any) -> None:
        if isinstance(error, OubliError):
            status = error_status(error)
            bound.info("rpc", code=status_code_for(error).name, reason=error.reason)
            context.abort_with_status(status)
        bound.error("rpc", code="INTERNAL", error_type=type(error).__name__)
        context.abort_with_status(
            plain_status(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")
        )

    def _wrap_unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = _request_id(context)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            start = time.perf_counter()
            bound = log.bind(method=method, request_id=request_id)
            if request is _MALFORMED:
                bound.info("rpc", code="INVALID_ARGUMENT", reason="MALFORMED_REQUEST")
                context.abort_with_status(
                    plain_status(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "request could not be parsed (string fields must be valid UTF-8)",
                        "MALFORMED_REQUEST",
                    )
                )
            # oubli's servicers never abort themselves: they raise domain errors, and
            # this is the one place that turns exceptions into statuses.
            try:
                response = behavior(request, context)
            except Exception as error:
                self._fail(context, error, bound.bind(ms=_ms(start)))
                raise  # pragma: no cover - abort_with_status raises
            bound.info("rpc", code="OK", ms=_ms(start))
            return response

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_id = _request_id(context)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            start = time.perf_counter()
            bound = log.bind(method=method, request_id=request_id)
            if request is _MALFORMED:
                context.abort_with_status(
                    plain_status(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "request could not be parsed (string fields must be valid UTF-8)",
                        "MALFORMED_REQUEST",
                    )
                )
            try:
                yield from behavior(request, context)
            except Exception as error:
                self._fail(context, error, bound.bind(ms=_ms(start)))
            bound.info("rpc", code="OK", ms=_ms(start))

        return wrapped


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
