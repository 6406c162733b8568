"""Run ``oubli serve`` / ``oubli dev`` as real processes for integration tests."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import grpc

from tests.conftest import SESSION_LOGS
from tests.stack import TEST_POLICY_TOML, TEST_TOKEN
from vault.access.authentication import token_hash


def replica_args(database_url: str, vault_addr: str) -> list[str]:
    """`oubli serve` arguments of one replica: the shared database, one erasure ledger
    for every replica (a fresh SQLite file), real OpenBao on a fresh Transit mount (the
    token goes in the environment, VAULT_TOKEN)."""
    ledger = Path(tempfile.mkdtemp(prefix="oubli-ledger-")) / "erasures.db"
    return [
        "serve",
        "--database-url",
        database_url,
        "--ledger-url",
        f"sqlite:///{ledger}",
        "--kms",
        "vault",
        "--vault-addr",
        vault_addr,
        "--vault-mount",
        f"transit-{secrets.token_hex(4)}",
    ]


def own_channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own: grpc shares connections between the
    channels of one process that have the same settings, and with ``--workers`` each
    connection reaches one worker."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def metric_per_worker(metrics_port: int, metric: str, **labels: str) -> dict[str, float]:
    """``metric``'s value per worker (its samples with these labels, summed), from the
    metrics of ``oubli serve --workers N``."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        name, _, rest = line.partition("{")
        if name != metric:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest.rpartition("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            worker = found["worker"]
            values[worker] = values.get(worker, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


class ServerProcess:
    """An ``oubli`` server in its own process; stderr (the JSON log) goes to a file."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        umask: int = -1,
        launcher: tuple[str, ...] = (),
    ) -> None:
        """``umask``: the server's (-1: this process's); ``launcher``: a command the
        server runs under (e.g. valgrind and its options; none: run directly)."""
        self.workdir = workdir
        self.umask = umask
        self.launcher = launcher
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = workdir / f"ready-{time.monotonic_ns()}"
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        SESSION_LOGS.append(self.log_path)
        self.args = [*args, "--ready-file", str(self.ready_file)]
        if args and args[0] in ("serve", "dev") and "--listen" not in args:
            self.args += ["--listen", "127.0.0.1:0"]
        #: A token the server accepts (test-admin for serve; control-panel for dev).
        self.token = TEST_TOKEN
        if args and args[0] == "serve" and "--callers" not in args:
            callers = workdir / "callers.toml"
            callers.write_text(TEST_POLICY_TOML)
            tokens = workdir / "tokens.toml"
            tokens.write_text(f'[tokens]\n"test-admin" = ["{token_hash(TEST_TOKEN)}"]\n')
            self.args += ["--callers", str(callers), "--tokens-file", str(tokens)]
        self.tokens_dir = workdir / f"tokens-{time.monotonic_ns()}"
        if args and args[0] == "dev":
            self.args += ["--tokens-out", str(self.tokens_dir)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 60.0) -> ServerProcess:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed by the child's exit
        self.process = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "vault.app.cli", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
            umask=self.umask,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            if self.ready_file.exists():
                self.port = int(self.ready_file.read_text())
                if self.args[0] == "dev":
                    self.token = (self.tokens_dir / "control-panel.token").read_text()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready in time:\n{self.log_path.read_text()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
