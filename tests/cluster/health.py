"""gRPC health of a drill replica, as a load balancer's health check sees it."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cluster.topology import Replica

#: The longest any drill waits for a replica's health to change.
HEALTH_BOUND = 30.0


def health_of(replica: Replica, service: str = "") -> str:
    with grpc.insecure_channel(replica.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def wait_for_health(
    replica: Replica, status: str, since: float, bound: float = HEALTH_BOUND
) -> float:
    """Seconds from ``since`` until the replica's health says ``status`` (bounded)."""
    while health_of(replica) != status:
        assert time.monotonic() - since < bound, f"{replica.host}'s health never said {status}"
        time.sleep(0.1)
    return time.monotonic() - since
