"""Hosts made of Linux network namespaces, joined by veth pairs to bridges ("links").

Each host is a network namespace of its own (``ip netns add``), with its own loopback
and one interface per link it is on; each link is a bridge in a hub namespace, so the
root namespace gets no interface, address or route from a drill. The test process
reaches a port on a host's loopback through a :class:`Forwarder` (127.0.0.1 in the root
namespace to 127.0.0.1 in the host's), and puts a listener on a host's address with
:func:`socket_in` (a socket made by a thread that entered the namespace with setns(2)).

Everything here needs root (CAP_SYS_ADMIN) and iproute2; when either is missing the
drill fails loudly rather than skipping.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable

#: Every namespace a drill makes starts with this, then the pid of the test process.
PREFIX = "oubli-drill-"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no kernel support)."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; raise with its stderr when it fails."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("the cluster drill makes network namespaces: run it as root")
    binary = shutil.which("ip")
    if binary is None:
        raise NetnsUnavailable("iproute2's `ip` is missing: apt-get install iproute2")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def _enter(namespace: str) -> None:
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def socket_in(namespace: str) -> socket.socket:
    """A TCP socket of ``namespace``'s network stack (bind/connect it from any thread).

    A socket belongs to the namespace of the thread that made it; the thread that
    enters the namespace exits right after, so no other code runs in it.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            _enter(namespace)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as e:  # handed to the caller
            made.append(e)

    thread = threading.Thread(target=make, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class _Relay:
    """Accepts on ``listener`` and relays each connection to ``connect()``'s socket."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
        self._listener = listener
        self._connect = connect
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="relay")
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(downstream,), daemon=True).start()

    def _relay(self, downstream: socket.socket) -> None:
        try:
            upstream = self._connect()
        except OSError:
            downstream.close()  # as a load balancer with no backend: the client sees a reset
            return
        threading.Thread(target=_pump, args=(downstream, upstream), daemon=True).start()
        _pump(upstream, downstream)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


class Forwarder(_Relay):
    """127.0.0.1:``port`` (root namespace) to 127.0.0.1:``target_port`` in ``namespace``."""

    def __init__(self, namespace: str, target_port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port: int = listener.getsockname()[1]

        def connect() -> socket.socket:
            upstream = socket_in(namespace)
            upstream.settimeout(5)
            try:
                upstream.connect(("127.0.0.1", target_port))
            except OSError:
                upstream.close()
                raise
            upstream.settimeout(None)
            return upstream

        super().__init__(listener, connect)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Network:
    """Hosts on links: ``add_link("kms", "10.213.1")``, ``add_host("bao1", kms=1)``."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.links: dict[str, str] = {}
        self.hosts: dict[str, dict[str, str]] = {}
        self._namespaces: list[str] = []

    @staticmethod
    def remove_stale() -> None:
        """Namespaces a drill left behind (its test process is gone): delete them."""
        for line in ip("netns", "list").splitlines():
            name = line.split()[0] if line.strip() else ""
            if not name.startswith(PREFIX):
                continue
            pid = name[len(PREFIX) :].split("-")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(NetnsUnavailable):
                    ip("netns", "delete", name)

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def add_link(self, link: str, subnet: str) -> None:
        """A bridge ``br-LINK`` in the hub; hosts on it get ``SUBNET.N/24``."""
        if not self._namespaces:
            self._add_namespace(self.hub)
        ip("-n", self.hub, "link", "add", f"br-{link}", "type", "bridge")
        ip("-n", self.hub, "link", "set", f"br-{link}", "up")
        self.links[link] = subnet

    def add_host(self, host: str, **addresses: int) -> str:
        """A namespace for ``host`` with an interface named after each link, e.g.
        ``kms`` with address SUBNET.N; returns the namespace's name."""
        namespace = self.namespace(host)
        self._add_namespace(namespace)
        self.hosts[host] = {}
        for link, number in addresses.items():
            peer = f"{link[0]}-{host}"[:15]
            ip("-n", self.hub, "link", "add", peer, "type", "veth",
               "peer", "name", link, "netns", namespace)  # fmt: skip
            ip("-n", self.hub, "link", "set", peer, "master", f"br-{link}", "up")
            address = f"{self.links[link]}.{number}"
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
            ip("-n", namespace, "link", "set", link, "up")
            self.hosts[host][link] = address
        return namespace

    def address(self, host: str, link: str) -> str:
        return self.hosts[host][link]

    def exec_prefix(self, host: str) -> tuple[str, ...]:
        """Run a command on ``host``: ``ip netns exec`` execs it (same pid)."""
        return ("ip", "netns", "exec", self.namespace(host))

    def set_link(self, host: str, link: str, *, up: bool) -> None:
        """Pull (or plug back) the host's cable on ``link``: its interface goes down,
        with the route to the link's subnet."""
        ip("-n", self.namespace(host), "link", "set", link, "up" if up else "down")

    def destroy(self) -> None:
        """Delete every namespace made here (their veth pairs go with them)."""
        for name in reversed(self._namespaces):
            with contextlib.suppress(NetnsUnavailable):
                ip("netns", "delete", name)
        self._namespaces.clear()
