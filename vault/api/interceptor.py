"""Server interceptor: malformed requests, error translation and access logs.

- A request that does not parse (e.g. invalid UTF-8 in a string field) is answered
  INVALID_ARGUMENT instead of grpc's default INTERNAL "Exception deserializing request".
- Domain errors become statuses through :mod:`vault.api.status`; any other exception
  becomes INTERNAL with a generic message (its text could hold anything) and is logged
  by type only.
- While the serving gate is closed (the restore fence has not passed,
  vault/usecases/restore_fence.py), every call is refused UNAVAILABLE before anything
  else runs; once open, the check is one attribute read.
- One structured log line per RPC: method, status, duration, request id. Never a
  request or response body.
- With an ``observe`` hook (the metrics endpoint's, vault/app/metrics.py), each RPC's
  method, status code and duration are handed to it once, when its status is known.
- With a ``tracer`` (an OpenTelemetry Tracer, vault/app/tracing.py; None: off), each RPC
  is a SERVER span named for its method, the parent of its database and KMS spans;
  attributes: the method, the status code, the caller's name. Nothing from the request,
  no exception text.
"""

from __future__ import annotations

import collections
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from kms.deadline import time_limit
from vault.access.authentication import Authenticator
from vault.access.caller_policy import CallerPolicy, CallerRule, rpc_name
from vault.access.caller_scope import AccessNote, acting_as, noting
from vault.api.rpcs import AUDITED_IN_TRANSACTION, READ_ONLY
from vault.api.status import error_status, plain_status, status_code_for
from vault.audit.recorder import AuditRecorder
from vault.errors import OubliError
from vault.storage.audit_log import AuditRide, riding
from vault.usecases.restore_fence import ServingGate

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


#: A canonical UUID (lowercase, hyphenated). The id goes into the log line and the
#: permanent audit trail, so it takes no format that could carry a personal value as
#: typed: a phone or card number, an e-mail address.
_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _request_id(context: grpc.ServicerContext) -> str:
    """The caller's x-request-id when it is a canonical UUID, else a new random one."""
    for key, value in context.invocation_metadata():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return str(uuid.uuid4())


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status
):
    pass


def _with_request_id(status: grpc.Status, request_id: str) -> grpc.Status:
    # abort_with_status replaces the trailing metadata: carry the request id in it.
    trailers = (*(status.trailing_metadata or ()), (REQUEST_ID_HEADER, request_id))
    return _Status(status.code, status.details, trailers)


_MALFORMED_STATUS = plain_status(
    grpc.StatusCode.INVALID_ARGUMENT,
    "request could not be parsed (string fields must be valid UTF-8)",
    "MALFORMED_REQUEST",
)
_INTERNAL_STATUS = plain_status(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")


#: The gate of a server without a restore fence (in-process tests of the edge).
_OPEN = ServingGate()
_OPEN.open()


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:  # grpc's runtime classes are not generic
    _Interceptor = grpc.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


#: The metrics hook: (full method name, status code, seconds), once per RPC.
RpcObserver = Callable[[str, grpc.StatusCode, float], None]


class ServiceInterceptor(_Interceptor):
    """Parses, authenticates, authorizes the RPC, runs it, logs it, maps its errors.

    ``authenticator`` and ``policy`` are both given in a served configuration; without
    them (in-process tests of the domain) every call runs with no caller rule.
    """

    def __init__(
        self,
        authenticator: Authenticator | None = None,
        policy: CallerPolicy | None = None,
        audit: AuditRecorder | None = None,
        gate: ServingGate | None = None,
        observe: RpcObserver | None = None,
        tracer: Any = None,
    ) -> None:
        if (authenticator is None) != (policy is None):
            raise ValueError("authenticator and policy go together")
        self._authenticator = authenticator
        self._policy = policy
        self._audit = audit
        self._gate = gate or _OPEN
        self._observe = observe
        self._tracer = tracer
        #: method -> (grpc's handler, the wrapped one): grpc asks intercept_service on
        #: every call; the wrapper of a method is built once.
        self._handlers: dict[str, tuple[_Handler, _Handler]] = {}
        #: (caller, method) -> the caller's rule, for the RPCs the policy lets it call
        #: (the policy is fixed for the server's life; a refusal is decided every time).
        self._allowed: dict[tuple[str, str], CallerRule] = {}

    def _observed(self, method: str, code: grpc.StatusCode, start: float) -> None:
        if self._observe is not None:
            self._observe(method, code, time.perf_counter() - start)
        if self._tracer is not None:
            from opentelemetry import trace

            span = trace.get_current_span()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(trace.StatusCode.ERROR)

    def _traced_caller(self, caller: str) -> None:
        if self._tracer is not None:
            from opentelemetry import trace

            trace.get_current_span().set_attribute("oubli.caller", caller)

    def _span(self, method: str) -> Any:
        """The RPC's server span (the caller sets it current)."""
        from opentelemetry.trace import SpanKind

        service, _, name = method.lstrip("/").partition("/")
        return self._tracer.start_as_current_span(
            method.lstrip("/"),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _traced_unary(self, method: str, wrapped: Callable[..., Any]) -> Callable[..., Any]:
        if self._tracer is None:
            return wrapped

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            with self._span(method):
                return wrapped(request, context)

        return traced

    def _traced_stream(self, method: str, wrapped: Callable[..., Any]) -> Callable[..., Any]:
        if self._tracer is None:
            return wrapped

        def traced(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._span(method):
                yield from wrapped(request, context)

        return traced

    def _record(
        self,
        method: str,
        caller: str,
        request: Any,
        note: AccessNote,
        outcome: str,
        request_id: str,
        bound: Any,
        *,
        required: bool,
    ) -> None:
        """Append the audit entry. ``required``: failure aborts the call (no audit, no
        access); otherwise (the call failed anyway) it is only logged."""
        # Unauthenticated calls are logged, not audited: whoever reaches the port must
        # not be able to grow the audit trail.
        if self._audit is None or caller == "anonymous":
            return
        try:
            self._audit.record(
                method=method,
                caller=caller,
                request=None if request is _MALFORMED else request,
                note=note,
                outcome=outcome,
                request_id=request_id,
            )
        except OubliError:
            if required:
                raise
            bound.error("audit_append_failed", outcome=outcome)

    def _ride(
        self, rpc: str, method: str, caller: str, request: Any, note: AccessNote, request_id: str
    ) -> AuditRide | None:
        """The audit ride of a change audited in its own transaction; None for any other
        call (and for unaudited ones: anonymous, or no recorder)."""
        if rpc not in AUDITED_IN_TRANSACTION or self._audit is None or caller == "anonymous":
            return None
        return self._audit.ride(
            method=method, caller=caller, request=request, note=note, request_id=request_id
        )

    def _authenticate(self, context: grpc.ServicerContext) -> str | None:
        """The caller's name; None when the server runs without authentication."""
        if self._authenticator is None:
            return None
        return self._authenticator.authenticate(context).name

    def _authorize(self, method: str, caller: str | None) -> CallerRule | None:
        if caller is None or self._policy is None:
            return None
        rule = self._allowed.get((caller, method))
        if rule is None:
            rule = self._allowed[(caller, method)] = self._policy.check_rpc(caller, method)
        return rule

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
        built = self._handlers.get(method)
        if built is not None and built[0] is handler:
            return built[1]
        wrapped = self._wrapped(method, handler)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _wrapped(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._traced_unary(method, self._wrap_unary(method, handler.unary_unary)),
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._traced_stream(method, self._wrap_stream(method, handler.unary_stream)),
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    @staticmethod
    def _begin(method: str, context: grpc.ServicerContext) -> tuple[str, Any, float]:
        request_id = _request_id(context)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        return request_id, log.bind(method=method, request_id=request_id), time.perf_counter()

    def _fail(
        self,
        method: str,
        context: grpc.ServicerContext,
        error: BaseException | None,
        request_id: str,
        bound: Any,
        start: float,
    ) -> None:
        """Log and abort; error None means the request did not parse."""
        if error is None:
            bound.info("rpc", code="INVALID_ARGUMENT", reason="MALFORMED_REQUEST", ms=_ms(start))
            status = _MALFORMED_STATUS
        elif isinstance(error, OubliError):
            code = status_code_for(error)
            bound.info("rpc", code=code.name, reason=error.reason, ms=_ms(start))
            status = error_status(error)
        else:
            # The exception's text could hold anything: log its type only.
            bound.error("rpc", code="INTERNAL", error_type=type(error).__name__, ms=_ms(start))
            status = _INTERNAL_STATUS
        self._observed(method, status.code, start)
        context.abort_with_status(_with_request_id(status, request_id))

    def _wrap_unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            request_id, bound, start = self._begin(method, context)
            note, caller = AccessNote(), "anonymous"
            if request is _MALFORMED:
                self._fail(method, context, None, request_id, bound, start)
            if self._gate.refusal is not None:
                self._fail(method, context, self._gate.refusal, request_id, bound, start)
            # A read (vault.api.rpcs) is recorded once, before its response leaves; a change
            # is recorded in its own transaction (AUDITED_IN_TRANSACTION), or else also
            # (STARTED) before it runs.
            name_of_rpc = ".".join(rpc_name(method))
            read_only = name_of_rpc in READ_ONLY
            ride: AuditRide | None = None
            # oubli's servicers never abort themselves: they raise domain errors, and
            # this is the one place that turns exceptions into statuses.
            try:
                name = self._authenticate(context)
                caller = name or "internal"
                bound = bound.bind(caller=caller)
                self._traced_caller(caller)
                rule = self._authorize(method, name)
                if not read_only:
                    # A change is recorded with it, or before it is made: if the audit
                    # cannot be written, nothing is changed (no audit, no access).
                    ride = self._ride(name_of_rpc, method, caller, request, note, request_id)
                    if ride is None:
                        self._record(
                            method, caller, request, note, "STARTED", request_id, bound,
                            required=True,
                        )  # fmt: skip
                # KMS calls made for this RPC end before its deadline (kms/deadline.py).
                with (
                    acting_as(rule),
                    noting(note),
                    riding(ride),
                    time_limit(context.time_remaining),
                ):
                    response = behavior(request, context)
            except Exception as error:
                outcome = error.reason if isinstance(error, OubliError) else "INTERNAL"
                self._record(
                    method, caller, request, note, outcome, request_id, bound, required=False
                )
                self._fail(method, context, error, request_id, bound, start)
                raise  # pragma: no cover - abort_with_status raises
            # A read's entry must exist before its data leaves (no audit, no access). A
            # change was recorded as STARTED already: if its outcome cannot be written,
            # the change stands and the client must not be told otherwise. A change
            # whose entry rode in its transaction is recorded (a ride the change did
            # not take leaves its entry required here: there was no STARTED).
            if ride is None or not ride.written:
                try:
                    self._record(
                        method, caller, request, note, "OK", request_id, bound,
                        required=read_only or ride is not None,
                    )  # fmt: skip
                except OubliError as error:
                    self._fail(method, context, error, request_id, bound, start)
            bound.info("rpc", code="OK", ms=_ms(start))
            self._observed(method, grpc.StatusCode.OK, start)
            return response

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_id, bound, start = self._begin(method, context)
            note, caller = AccessNote(), "anonymous"
            if request is _MALFORMED:
                self._fail(method, context, None, request_id, bound, start)
            if self._gate.refusal is not None:
                self._fail(method, context, self._gate.refusal, request_id, bound, start)
            try:
                name = self._authenticate(context)
                caller = name or "internal"
                bound = bound.bind(caller=caller)
                self._traced_caller(caller)
                rule = self._authorize(method, name)
                # A stream is recorded before its first message (no audit, no access)
                # and again with its outcome.
                self._record(
                    method, caller, request, note, "STARTED", request_id, bound, required=True
                )
                with acting_as(rule), noting(note), time_limit(context.time_remaining):
                    yield from behavior(request, context)
            except GeneratorExit:  # the client cancelled or went away mid-stream
                self._record(
                    method, caller, request, note, "CANCELLED", request_id, bound, required=False
                )
                bound.info("rpc", code="CANCELLED", ms=_ms(start))
                self._observed(method, grpc.StatusCode.CANCELLED, start)
                raise
            except Exception as error:
                outcome = error.reason if isinstance(error, OubliError) else "INTERNAL"
                self._record(
                    method, caller, request, note, outcome, request_id, bound, required=False
                )
                self._fail(method, context, error, request_id, bound, start)
            self._record(method, caller, request, note, "OK", request_id, bound, required=False)
            bound.info("rpc", code="OK", ms=_ms(start))
            self._observed(method, grpc.StatusCode.OK, start)

        return wrapped


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
