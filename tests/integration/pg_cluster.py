"""A PostgreSQL server of the test's own, to stop and start under load.

The shared server on 127.0.0.1:5432 serves the whole suite and is never stopped; a
fault test that stops PostgreSQL runs this one instead: ``initdb`` into a temporary
directory and ``pg_ctl`` on a free loopback port below 32768, run as the ``postgres``
OS user when the suite runs as root (``initdb`` refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

#: First port tried; the ephemeral range (32768 and up) is left to the kernel.
FIRST_PORT = 15433
LAST_PORT = 32767


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found or found[-1] is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return str(found[-1])


def _free_port() -> int:
    for port in range(FIRST_PORT, LAST_PORT + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768 for PostgreSQL")


class PostgresCluster:
    """``initdb`` + ``pg_ctl`` under a temporary directory; trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        # Not under pytest's tmp_path: root's temp tree is closed to the postgres user.
        self.base = Path(tempfile.mkdtemp(prefix="oubli-pg-"))
        self.data_dir = self.base / "data"
        if self._as_postgres:
            shutil.chown(self.base, user="postgres", group="postgres")
        self.log_path = self.base / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        argv = ["runuser", "-u", "postgres", "--", *command] if self._as_postgres else [*command]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> PostgresCluster:
        self._run(
            _bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        return self

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base}"
        )
        self._run(
            _bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash: no checkpoint, recovery from the WAL at the next start."""
        self._run(_bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        return pid_file.exists()

    def remove(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.init().start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
