"""SIGTERM drains a real `oubli serve`: the calls in flight finish, new ones are refused.

The server runs from a configuration file (`--config`, drain_seconds from the file).
Two streaming exports of a large subject are in flight when SIGTERM arrives: the client
has read one chunk of each and stops reading, so the server's handlers are held by flow
control, still running. Then, in order: a health Watch opened before receives
NOT_SERVING, a new call is refused UNAVAILABLE, the process is still alive (it waits for
the exports), the exports are read to the end and are complete, and the process exits 0
well within the drain period.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oubli_client import NewRecord, OubliClient
from oubli_client.errors import OubliClientError
from tests.integration.processes import ServerProcess
from vault.usecases.export import EXPORT_PAGE

#: Records of the large subject, and each one's size: 3 pages of export (EXPORT_PAGE),
#: 1 MB each, far more than the 64 KiB flow-control window lets the server send before
#: the client reads.
RECORDS = 3 * EXPORT_PAGE
FIELD_BYTES = 2_000
DRAIN_SECONDS = 30.0

pytestmark = pytest.mark.timeout(120)


def _large_subject(client: OubliClient) -> str:
    subject = client.create_subject().subject_id
    for start in range(0, RECORDS, 500):
        client.batch_create_records(
            [
                NewRecord(subject, "usage", {"page": f"{n:06d}" + "p" * FIELD_BYTES})
                for n in range(start, min(start + 500, RECORDS))
            ]
        )
    return subject


def _slow_reader_channel(target: str) -> grpc.Channel:
    """A channel whose stream windows stay at 64 KiB (no BDP probing): a stream it does
    not read holds the server's handler, blocked on flow control, in flight."""
    return grpc.insecure_channel(
        target,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 64 << 20)],
    )


def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    config = tmp_path / "oubli.toml"
    config.write_text(f"drain_seconds = {DRAIN_SECONDS}\nmax_workers = 8\n")
    server = ServerProcess(tmp_path, "serve", "--config", str(config))
    with server, OubliClient(server.target, token=server.token, timeout=30) as client:
        subject = _large_subject(client)
        assert server.process is not None

        # A load balancer's view: a health Watch, SERVING now.
        health_channel = grpc.insecure_channel(server.target)
        watch = health_pb2_grpc.HealthStub(health_channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        statuses: queue.Queue[int | str] = queue.Queue()

        def follow() -> None:
            try:
                for response in watch:
                    statuses.put(response.status)
                statuses.put("ended")
            except grpc.RpcError as e:
                statuses.put(f"error {e.code().name}")

        threading.Thread(target=follow, daemon=True).start()
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING

        # Two exports in flight, each on its own connection; one chunk read of each.
        channels = [_slow_reader_channel(server.target) for _ in range(2)]
        exporters = [OubliClient(server.target, token=server.token, channel=c) for c in channels]
        streams: list[Iterator[bytes]] = [
            e.stream_export(subject, "service", timeout=60) for e in exporters
        ]
        firsts = [next(stream) for stream in streams]

        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # The drain starts: NOT_SERVING on the Watch, then the Watch ends.
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.NOT_SERVING
        not_serving_after = time.monotonic() - signalled
        assert statuses.get(timeout=10) in ("ended", "error UNAVAILABLE", "error CANCELLED")

        # New calls are refused UNAVAILABLE, on a connection opened before (the client
        # under test) and on a new one.
        with pytest.raises(OubliClientError) as refused:
            client.get_subject(subject)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        with (
            OubliClient(server.target, token=server.token, max_attempts=1) as late,
            pytest.raises(OubliClientError) as refused_new,
        ):
            late.get_subject(subject)
        assert refused_new.value.code == grpc.StatusCode.UNAVAILABLE

        # The exports hold the process: it is still running.
        time.sleep(1.0)
        assert server.process.poll() is None, "the server exited with calls in flight"

        # Read the exports to the end: complete documents, every record.
        for first, stream in zip(firsts, streams, strict=True):
            document = json.loads(first + b"".join(stream))
            assert len(document["categories"]["usage"]["records"]) == RECORDS
        for channel in channels:
            channel.close()
        health_channel.close()

        code = server.process.wait(timeout=DRAIN_SECONDS)
        exited_after = time.monotonic() - signalled
        assert code == 0, server.log()
        assert exited_after < DRAIN_SECONDS / 2
        log = server.log()
        assert '"event": "draining"' in log and '"event": "stopped"' in log
        print(
            f"NOT_SERVING {not_serving_after * 1000:.0f} ms after SIGTERM; "
            f"exit 0 {exited_after:.2f} s after SIGTERM (drain period {DRAIN_SECONDS:g} s)"
        )


def test_sigterm_cancels_calls_still_running_at_the_end_of_the_drain(tmp_path: Path) -> None:
    """A call that outlives drain_seconds is cancelled and the process still exits 0,
    within the drain period (plus the time to close)."""
    drain = 2.0
    server = ServerProcess(tmp_path, "serve", "--drain-seconds", str(drain))
    with server, OubliClient(server.target, token=server.token, timeout=30) as client:
        subject = _large_subject(client)
        assert server.process is not None
        channel = _slow_reader_channel(server.target)
        with OubliClient(server.target, token=server.token, channel=channel) as exporter:
            stream = exporter.stream_export(subject, "service", timeout=60)
            next(stream)  # in flight, and never read further before the drain ends
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = server.process.wait(timeout=drain + 10)
            exited_after = time.monotonic() - signalled
            with pytest.raises(OubliClientError) as cut:
                b"".join(stream)
            assert cut.value.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        channel.close()
        assert code == 0, server.log()
        assert drain <= exited_after < drain + 5
