"""oubli_client.retry: which failures are tried again, how long between tries."""

from __future__ import annotations

import random

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from oubli_client import NotFound, RetryPolicy, Unavailable
from oubli_client.retry import call_with_retries


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a failed unary call raises: a code, details and the status trailer."""

    def __init__(self, code: grpc.StatusCode, retry_after: float | None = None) -> None:
        self._code = code
        status = status_pb2.Status(code=code.value[0], message="server says no")
        if retry_after is not None:
            detail = status.details.add()
            detail.Pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=int(retry_after))))
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "server says no"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


class Attempts:
    """Fails with the given errors in turn, then answers "ok"."""

    def __init__(self, *errors: grpc.RpcError) -> None:
        self.errors = list(errors)
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _run(attempt: Attempts, *, idempotent: bool, policy: RetryPolicy | None = None) -> list[float]:
    sleeps: list[float] = []
    call_with_retries(
        attempt,
        policy or RetryPolicy(),
        idempotent=idempotent,
        rng=random.Random(7),
        sleep=sleeps.append,
    )
    return sleeps


def test_an_idempotent_call_is_tried_again_on_unavailable() -> None:
    attempt = Attempts(*(FakeRpcError(grpc.StatusCode.UNAVAILABLE) for _ in range(3)))
    sleeps = _run(attempt, idempotent=True)
    assert attempt.count == 4 and len(sleeps) == 3


def test_a_call_that_changes_data_is_never_tried_again() -> None:
    attempt = Attempts(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(Unavailable) as raised:
        _run(attempt, idempotent=False)
    assert attempt.count == 1 and raised.value.message == "server says no"


def test_other_errors_are_not_tried_again() -> None:
    attempt = Attempts(FakeRpcError(grpc.StatusCode.NOT_FOUND))
    with pytest.raises(NotFound):
        _run(attempt, idempotent=True)
    assert attempt.count == 1


def test_attempts_stop_at_the_policys_maximum() -> None:
    attempt = Attempts(*(FakeRpcError(grpc.StatusCode.UNAVAILABLE) for _ in range(5)))
    with pytest.raises(Unavailable):
        _run(attempt, idempotent=True, policy=RetryPolicy(max_attempts=3))
    assert attempt.count == 3


def test_pauses_are_jittered_under_a_doubling_cap() -> None:
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.1, max_backoff=1.0)
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    runs = [list(policy.pauses(random.Random(seed))) for seed in range(50)]
    for pauses in runs:
        assert len(pauses) == 7
        assert all(0 <= p <= cap for p, cap in zip(pauses, caps, strict=True))
    # jitter: clients that failed together do not come back together
    assert len({tuple(p) for p in runs}) == 50
    assert max(p[-1] for p in runs) > 0.5  # the cap grew


def test_the_servers_retry_delay_is_a_floor() -> None:
    attempt = Attempts(FakeRpcError(grpc.StatusCode.UNAVAILABLE, retry_after=3))
    sleeps = _run(attempt, idempotent=True)
    assert sleeps == [3.0]


@pytest.mark.parametrize(
    "policy",
    [
        {"max_attempts": 0},
        {"initial_backoff": 0},
        {"initial_backoff": 3.0, "max_backoff": 2.0},
    ],
)
def test_a_nonsense_policy_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**policy)  # type: ignore[arg-type]
