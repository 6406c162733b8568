"""Worker processes: ``oubli serve --workers N``, N servers on one port.

One Python process runs oubli's Python code on one core at a time (the GIL); N server
processes on one port use N. The process started (the supervisor) serves no call:

1. it migrates the database and makes sure the audit signing key exists, once, so the
   workers never race on either;
2. it checks that no other socket listens on the port (the workers share it with
   SO_REUSEPORT, which would otherwise let them join another server's port without a
   word), then starts the workers, each a fresh interpreter (multiprocessing "spawn":
   no grpc object, thread or lock of the supervisor is inherited; grpc's own
   multiprocessing example requires as much). Worker 0 binds first; with port 0 the
   others then join the port it got;
3. it writes the ready file once every worker serves, and serves the Prometheus
   endpoint, each worker's figures labelled ``worker`` (vault/app/metrics.py);
4. on SIGTERM or SIGINT it sends SIGTERM to every worker, each of which drains as a
   lone server does (health NOT_SERVING, new calls refused, calls in flight finish
   within ``drain_seconds``), and exits 0 once all have exited 0;
5. when a worker exits without being asked to (a crash, a kill), it stops the others
   the same way and exits 1: an orchestrator then restarts the whole, rather than a
   server running short of workers without anyone noticing.

Each worker is a whole server of its own, as a replica is: its DEK cache, database
pool, KMS client and guard, gRPC thread pool (``max_workers``), readiness probe and
health, restore fence, and audit sealer. The audit chain stays one chain: workers
record entries without a lock and seal them under the database's chain lock, as
replicas do (docs/audit.md#concurrent-appends-record-then-seal). A worker whose
supervisor is gone (killed with SIGKILL) drains and stops by itself: it notices the
end of the pipe between them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from kms.base import KmsError
from vault.access.caller_policy import CallerPolicyError
from vault.app.config import ConfigError, ServerConfig, parse_host_port
from vault.app.logs import configure_logging
from vault.app.metrics import WorkerEndpoint, WorkersCollector, start_metrics_server
from vault.app.server import (
    build_kms,
    listen_refusal,
    log_serving,
    open_database,
    serve_until_stopped,
    start_server,
)
from vault.app.stop_signals import StopSignals
from vault.audit.recorder import signing_key_id
from vault.audit.signing import SigningKey
from vault.catalog import CatalogError
from vault.clock import utc_now
from vault.errors import OubliError, Unavailable
from vault.private_files import OpenToOthers, write_private

log = structlog.get_logger("oubli.workers")

#: Beyond the drain period, how long a worker may take to close (pools, KMS client,
#: the last seal) before the supervisor kills it.
CLOSE_SECONDS = 30.0


class WorkerFailed(OubliError):
    """A worker process could not start; the message says which and why."""

    reason = "WORKER_FAILED"


@dataclass
class Worker:
    """A running worker process, as the supervisor sees it."""

    index: int
    process: BaseProcess
    #: The supervisor's end of the pipe: the worker reports on it once; its closing
    #: (the supervisor gone) tells the worker to stop.
    pipe: Connection
    port: int = 0
    metrics_port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    @property
    def endpoint(self) -> WorkerEndpoint:
        return WorkerEndpoint(self.index, self.pid, self.metrics_port)


def serve_workers(config: ServerConfig, ready_file: Path | None = None) -> int:
    """Supervise ``config.workers`` server processes on ``config.listen`` until
    SIGTERM/SIGINT (exit code 0 when every worker drained and exited 0) or until a
    worker exits unasked (1).

    Raises:
        WorkerFailed: a worker could not start (the others are stopped first).
        Unavailable: the port is taken, or the metrics address cannot be bound.
        (and what preparing the database and the signing key raises)
    """
    prepare(config)
    _, port = parse_host_port(config.listen, "--listen")
    if port != 0:
        refusal = listen_refusal(config.listen)
        if refusal is not None:
            raise Unavailable(refusal)
    context = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    with StopSignals() as stop:
        try:
            # Worker 0 first: with port 0 it picks the port the others then join.
            workers.append(_spawn(context, config, 0, config.listen))
            first = _await_serving(workers[0])
            host, _ = parse_host_port(config.listen, "--listen")
            shared = f"[{host}]:{first.port}" if ":" in host else f"{host}:{first.port}"
            workers += [_spawn(context, config, i, shared) for i in range(1, config.workers)]
            for worker in workers[1:]:
                _await_serving(worker)
            metrics = None
            if config.metrics_address is not None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(WorkersCollector(lambda: [w.endpoint for w in workers]))
                try:
                    metrics = start_metrics_server(registry, *config.metrics_address)
                except OSError as e:
                    raise Unavailable(
                        f"cannot listen on {config.metrics_listen} for metrics"
                    ) from e
        except BaseException:
            _stop_all(workers, config.drain_seconds)
            raise
        log.info(
            "serving",
            port=first.port,
            workers=len(workers),
            pid=os.getpid(),
            worker_pids=[w.pid for w in workers],
            **({"metrics_port": metrics.port} if metrics is not None else {}),
        )
        if ready_file is not None:
            write_private(ready_file, str(first.port).encode())
        by_sentinel = {w.process.sentinel: w for w in workers}
        woken = wait([stop.fileno(), *by_sentinel])
        if stop.fileno() in woken:
            received = stop.wait()
            log.info(
                "draining",
                signal=received.name,
                workers=len(workers),
                drain_seconds=config.drain_seconds,
            )
            failed = False
        else:
            for sentinel in woken:
                gone = by_sentinel[sentinel]  # type: ignore[index]
                gone.process.join()  # reaped: its exit code is known
                log.error(
                    "worker_exited",
                    worker=gone.index,
                    pid=gone.pid,
                    exit_code=gone.process.exitcode,
                )
            log.info("stopping_workers", workers=len(workers))
            failed = True
        started = time.monotonic()
        codes = _stop_all(workers, config.drain_seconds)
        if metrics is not None:
            metrics.stop()
    code = 1 if failed or any(c != 0 for c in codes) else 0
    log.info(
        "stopped", seconds=round(time.monotonic() - started, 3), exit_codes=codes, exit_code=code
    )
    return code


def prepare(config: ServerConfig) -> None:
    """What the workers would otherwise race on, done once: the database migrated (its
    local files made private), the audit signing key chosen and present in the KMS."""
    storage = open_database(config)
    try:
        key_id = signing_key_id(storage, utc_now)
        kms = build_kms(config)
        try:
            SigningKey(kms, key_id).ensure()
        finally:
            kms.close()
    finally:
        storage.engine.dispose()


def _spawn(
    context: multiprocessing.context.SpawnContext, config: ServerConfig, index: int, listen: str
) -> Worker:
    """Start worker ``index`` on ``listen`` (:func:`_await_serving` waits for it)."""
    ours, theirs = context.Pipe()
    worker_config = dataclasses.replace(
        config,
        listen=listen,
        # Each worker's figures on a loopback port it picks; the supervisor serves them.
        metrics_listen="127.0.0.1:0" if config.metrics_address is not None else "",
    )
    process = context.Process(
        target=run_worker, args=(index, worker_config, theirs), name=f"oubli-worker-{index}"
    )
    process.start()
    theirs.close()  # the worker's end lives in the worker alone: its exit ends the pipe
    return Worker(index, process, ours)


def _await_serving(worker: Worker) -> Worker:
    """Wait until ``worker`` serves; raises WorkerFailed when it fails or exits first."""
    try:
        report = worker.pipe.recv() if wait([worker.pipe, worker.process.sentinel]) else None
    except EOFError:
        report = None
    if not isinstance(report, tuple) or report[0] != "serving":
        worker.process.join(timeout=CLOSE_SECONDS)
        why = report[1] if isinstance(report, tuple) else f"exit code {worker.process.exitcode}"
        raise WorkerFailed(f"worker {worker.index} could not start: {why}")
    _, worker.port, worker.metrics_port = report
    return worker


def _stop_all(workers: Sequence[Worker], drain_seconds: float) -> list[int | None]:
    """SIGTERM to every worker still running, then wait for each (killed when it
    outlasts the drain and the time to close); their exit codes."""
    for worker in workers:
        if worker.process.is_alive():
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + drain_seconds + CLOSE_SECONDS
    for worker in workers:
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            log.error("worker_killed", worker=worker.index, pid=worker.pid)
            worker.process.kill()
            worker.process.join()
        worker.pipe.close()
    return [worker.process.exitcode for worker in workers]


# --- in the worker process --------------------------------------------------------------


def run_worker(index: int, config: ServerConfig, pipe: Connection) -> None:
    """A worker's life: start a server on the shared port, report to the supervisor,
    serve until SIGTERM (or the supervisor's end), drain, exit."""
    configure_logging(fields={"worker": index})
    try:
        running = start_server(config, reuse_port=True)
    except (OubliError, CatalogError, CallerPolicyError, ConfigError, KmsError, OpenToOthers) as e:
        pipe.send(("failed", str(e)))  # what `oubli serve` would print, "cannot start: ..."
        raise SystemExit(1) from None
    except Exception as e:  # unforeseen: say what kind, then fail loudly (traceback)
        pipe.send(("failed", type(e).__name__))
        raise
    log_serving(running)

    def ready() -> None:
        metrics_port = running.metrics.port if running.metrics is not None else 0
        pipe.send(("serving", running.port, metrics_port))
        threading.Thread(
            target=_stop_when_supervisor_gone, args=(pipe,), name="supervisor-watch", daemon=True
        ).start()

    serve_until_stopped(running, config.drain_seconds, ready)
    # Everything is closed (pools, KMS client, ledger, the last seal). The interpreter's
    # own exit would wait seconds more on grpc's teardown, which holds up the drain of
    # the supervisor's other workers for nothing.
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(0)


def _stop_when_supervisor_gone(pipe: Connection) -> None:
    """Wait for the end of the pipe (the supervisor exited, even killed), then stop
    this worker as SIGTERM does."""
    try:
        while True:
            pipe.recv()
    except (EOFError, OSError):
        os.kill(os.getpid(), signal.SIGTERM)
