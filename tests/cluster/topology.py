"""The drill's hosts: a 3-node OpenBao raft cluster, a load balancer in front of it,
PostgreSQL, and 3 oubli replicas, each host a network namespace of its own.

::

    link "kms" 10.213.1.0/24           link "db" 10.213.2.0/24
    bao1 .1  bao2 .2  bao3 .3          pg .20 (PostgreSQL, port 5432)
    lb .10 (OpenBao's address, :8200)
    oubli1 .11  oubli2 .12  oubli3 .13 oubli1 .11  oubli2 .12  oubli3 .13

Each replica has two cables: "kms" to OpenBao (through the balancer) and "db" to
PostgreSQL, so a replica can be cut off from OpenBao alone. The balancer sends each new
connection to the node whose ``/v1/sys/health`` says active (200), as an operator's
load balancer does with that health check. The test process reaches every host's
loopback through forwarders on 127.0.0.1 of the root namespace; the root namespace gets
no interface or route.

OpenBao is set up as an operator would for oubli (:meth:`Drill.set_up_vault`): the
Transit mount enabled, the shipped least-privilege policy deploy/vault/oubli-policy.hcl
installed (its ``transit/`` prefix replaced by the drill's mount, as the file says to),
AppRole enabled with a role whose tokens live 6 s and at most 18 s, so every replica
renews and logs in again several times during a drill. Each replica logs in with its
own secret id (files ``role-id`` and ``secret-id`` in its work directory); the root
token is the operator's only, never a replica's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import hvac

from tests.cluster.netns import Forwarder, Network, _Relay, socket_in
from tests.integration.pg_cluster import PostgresCluster, _bin
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoRaftCluster, OpenBaoRaftNode

KMS_SUBNET = "10.213.1"
DB_SUBNET = "10.213.2"
BAO_PORT = 8200
PG_PORT = 5432
POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "vault" / "oubli-policy.hcl"
#: The AppRole role (and policy) name every replica logs in with.
ROLE = "oubli"
#: Short enough that a drill sees several renewals and re-logins per replica.
TOKEN_TTL = "6s"
TOKEN_MAX_TTL = "18s"


def policy_for_mount(mount: str) -> str:
    """deploy/vault/oubli-policy.hcl for the Transit mount ``mount`` (the file is written
    for ``transit``; its header says to replace ``transit/`` for another mount)."""
    text = POLICY_FILE.read_text()
    paths = text.count('path "')
    adapted = text.replace('path "transit/', f'path "{mount}/')
    # Every path of the file is either on the mount or the token's own (auth/token/...).
    assert adapted.count(f'path "{mount}/') + adapted.count('path "auth/token/') == paths
    return adapted


def write_private(path: Path, value: str) -> None:
    """Write a credential file atomically (a reader never sees half of it), mode 0600."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    os.replace(partial, path)


class ActiveNodeBalancer(_Relay):
    """Listens on the ``lb`` host and relays each connection to the active OpenBao node.

    Polls every node's health (10 times a second); while no node says active, new
    connections go to the last active one (refused when it is dead: the client sees a
    reset, as behind a load balancer with no healthy backend).
    """

    def __init__(self, network: Network, cluster: OpenBaoRaftCluster, ips: list[str]) -> None:
        namespace = network.namespace("lb")
        self.address = network.address("lb", "kms")
        listener = socket_in(namespace)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.address, BAO_PORT))
        listener.listen(128)
        self._cluster = cluster
        self._ips = dict(zip((n.node_id for n in cluster.nodes), ips, strict=True))
        self.active_ip = ips[0]
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="lb-health")
        self._poller.start()

        def connect() -> socket.socket:
            upstream = socket_in(namespace)
            upstream.settimeout(3)
            try:
                upstream.connect((self.active_ip, BAO_PORT))
            except OSError:
                upstream.close()
                raise
            upstream.settimeout(None)
            return upstream

        super().__init__(listener, connect)

    def _poll(self) -> None:
        while not self._stopping.wait(0.1):
            with contextlib.suppress(Exception):
                node = self._cluster.active()
                if node is not None:
                    self.active_ip = self._ips[node.node_id]

    @property
    def url(self) -> str:
        return f"http://{self.address}:{BAO_PORT}"

    def close(self) -> None:
        self._stopping.set()
        super().close()


class NamespacedPostgres(PostgresCluster):
    """``initdb`` + ``pg_ctl`` on the ``pg`` host, listening on its "db" address."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network
        self.port = PG_PORT
        self.host = network.address("pg", "db")

    def _run(self, *command: str) -> None:
        argv = ["runuser", "-u", "postgres", "--", *command] if self._as_postgres else [*command]
        subprocess.run(
            [*self.network.exec_prefix("pg"), *argv],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def init(self) -> NamespacedPostgres:
        super().init()
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {DB_SUBNET}.0/24 trust\n")
        return self

    def start(self) -> None:
        options = (
            f"-c listen_addresses={self.host},127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.base}"
        )
        self._run(
            _bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def create_database(self, name: str) -> None:
        self._run(
            _bin("createdb"), "-h", str(self.base), "-p", str(self.port), "-U", "postgres", name
        )

    def url_of(self, database: str) -> str:
        """The URL the replicas use (over the "db" link)."""
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"


class Replica(ServerProcess):
    """``oubli serve`` on its own host; ``target`` is its forwarder on 127.0.0.1."""

    def __init__(
        self, network: Network, host: str, workdir: Path, *args: str, env: dict[str, str]
    ) -> None:
        super().__init__(workdir, *args, env=env)
        self.network = network
        self.host = host
        self.forwarder: Forwarder | None = None
        self.role_id_file = workdir / "role-id"
        self.secret_id_file = workdir / "secret-id"

    def start(self, timeout: float = 60.0) -> Replica:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed by the child's exit
        argv = [sys.executable, "-m", "vault.app.cli", *self.args]
        self.process = subprocess.Popen(
            [*self.network.exec_prefix(self.host), *argv],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica {self.host} exited early:\n{self.log()}")
            if self.ready_file.exists() and self.ready_file.read_text().strip():
                self.port = int(self.ready_file.read_text())
                self.forwarder = Forwarder(self.network.namespace(self.host), self.port)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"replica {self.host} not ready in time:\n{self.log()}")

    @property
    def target(self) -> str:
        assert self.forwarder is not None, "replica not started"
        return self.forwarder.address

    def stop(self) -> int:
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        return super().stop()


class Drill:
    """Builds, holds and tears down the whole drill topology."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.network = Network()
        self.forwarders: list[Forwarder] = []
        self.cluster: OpenBaoRaftCluster | None = None
        self.balancer: ActiveNodeBalancer | None = None
        self.postgres: NamespacedPostgres | None = None
        self.replicas: list[Replica] = []
        self.pg_forwarder: Forwarder | None = None
        self.mount = f"transit-{secrets.token_hex(4)}"
        self.role_id = ""
        #: Seconds each stage of start() took.
        self.timings: dict[str, float] = {}

    def start(self) -> Drill:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        net = self.network
        Network.remove_stale()
        net.add_link("kms", KMS_SUBNET)
        net.add_link("db", DB_SUBNET)
        for i in (1, 2, 3):
            net.add_host(f"bao{i}", kms=i)
        net.add_host("lb", kms=10)
        net.add_host("pg", db=20)
        for i in (1, 2, 3):
            net.add_host(f"oubli{i}", kms=10 + i, db=10 + i)
        self.timings["network"] = time.monotonic() - t0

        t = time.monotonic()
        nodes = []
        for i in (1, 2, 3):
            host = f"bao{i}"
            forwarder = Forwarder(net.namespace(host), BAO_PORT)
            self.forwarders.append(forwarder)
            ip = net.address(host, "kms")
            nodes.append(
                OpenBaoRaftNode(
                    self.workdir / host,
                    host,
                    listen_address=f"0.0.0.0:{BAO_PORT}",
                    api_addr=f"http://{ip}:{BAO_PORT}",
                    cluster_addr=f"http://{ip}:{BAO_PORT + 1}",
                    cluster_listen_address=f"0.0.0.0:{BAO_PORT + 1}",
                    probe_address=f"http://{forwarder.address}",
                    command_prefix=net.exec_prefix(host),
                    log_path=self.workdir / f"{host}.log",
                )
            )
        self.cluster = OpenBaoRaftCluster(nodes).start()
        self.balancer = ActiveNodeBalancer(
            net, self.cluster, [net.address(f"bao{i}", "kms") for i in (1, 2, 3)]
        )
        self.set_up_vault()
        self.timings["openbao"] = time.monotonic() - t

        t = time.monotonic()
        self.postgres = NamespacedPostgres(net)
        self.postgres.init().start()
        self.postgres.create_database("oubli")
        self.postgres.create_database("ledger")
        self.pg_forwarder = Forwarder(net.namespace("pg"), PG_PORT)
        self.forwarders.append(self.pg_forwarder)
        self.timings["postgres"] = time.monotonic() - t

        t = time.monotonic()
        args = [
            "serve",
            "--database-url", self.postgres.url_of("oubli"),
            "--ledger-url", self.postgres.url_of("ledger"),
            "--kms", "vault",
            "--vault-addr", self.balancer.url,
            "--vault-mount", self.mount,
            "--vault-auth", "approle",
        ]  # fmt: skip
        env = {"VAULT_TOKEN": ""}  # never the root token
        for i in (1, 2, 3):
            host = f"oubli{i}"
            workdir = self.workdir / host
            replica = Replica(
                net, host, workdir, *args,
                "--vault-role-id-file", str(workdir / "role-id"),
                "--vault-secret-id-file", str(workdir / "secret-id"),
                env=env,
            )  # fmt: skip
            write_private(replica.role_id_file, self.role_id)
            self.new_secret_id(replica)
            self.replicas.append(replica)
            replica.start()
        self.timings["replicas"] = time.monotonic() - t
        self.timings["total"] = time.monotonic() - t0

    def operator(self) -> hvac.Client:
        """An hvac client with the root token, on the active OpenBao node (the operator's
        view; replicas never hold this token)."""
        assert self.cluster is not None
        node = self.cluster.wait_for_active(timeout=30)
        return hvac.Client(url=node.probe_address, token=self.cluster.token, timeout=10)

    def set_up_vault(self) -> None:
        """What the operator does once (docs/operations.md, "Vault authentication"): the
        Transit mount, the policy file, AppRole and the role."""
        root = self.operator()
        root.sys.enable_secrets_engine("transit", path=self.mount)
        root.sys.create_or_update_policy(ROLE, policy_for_mount(self.mount))
        root.sys.enable_auth_method("approle", path="approle")
        root.auth.approle.create_or_update_approle(
            ROLE,
            token_policies=[ROLE],
            token_no_default_policy=True,  # the policy file alone must be enough
            token_ttl=TOKEN_TTL,
            token_max_ttl=TOKEN_MAX_TTL,
            token_type="service",
        )
        self.role_id = str(root.auth.approle.read_role_id(ROLE)["data"]["role_id"])

    def new_secret_id(self, replica: Replica) -> None:
        """A fresh secret id for ``replica``, written to its file (read at its next login)."""
        answer = self.operator().auth.approle.generate_secret_id(ROLE)
        write_private(replica.secret_id_file, str(answer["data"]["secret_id"]))

    def take_credentials_away(self) -> None:
        """Every replica's secret id destroyed, then every token AppRole gave out revoked
        (in that order: no replica can log in again in between)."""
        root = self.operator()
        for replica in self.replicas:
            secret_id = replica.secret_id_file.read_text().strip()
            root.auth.approle.destroy_secret_id(ROLE, secret_id)
        root.sys.revoke_prefix("auth/approle/login")

    def restore_credentials(self) -> bool:
        """A new secret id for every replica, then the role unlocked if OpenBao locked it.

        OpenBao's user lockout (on by default for AppRole: 5 failed logins lock the role
        id for 15 minutes, whatever secret id comes next) is reached within seconds, as
        every replica tries to log in again each second. So giving credentials back is
        two steps for the operator: new secret ids, then ``sys/locked-users/ACCESSOR/
        unlock/ROLE_ID``. True if the role was locked.
        """
        for replica in self.replicas:
            self.new_secret_id(replica)
        root = self.operator()
        accessor = root.sys.list_auth_methods()["data"]["approle/"]["accessor"]
        locked = root.adapter.get("/v1/sys/locked-users")["data"]["by_namespace"]
        was_locked = any(
            self.role_id in m.get("alias_identifiers", [])
            for ns in locked
            for m in ns.get("mount_accessors") or []
            if m.get("mount_accessor") == accessor
        )
        if was_locked:
            root.adapter.post(f"/v1/sys/locked-users/{accessor}/unlock/{self.role_id}")
        return was_locked

    @property
    def database_url(self) -> str:
        """The replicas' database, as the test process reaches it (a forwarder)."""
        assert self.pg_forwarder is not None
        return f"postgresql+psycopg://postgres@{self.pg_forwarder.address}/oubli"

    def transit_key_status(self, node: OpenBaoRaftNode, key_id: str) -> int:
        """HTTP status of reading Transit key ``key_id`` from ``node`` itself (standby
        nodes answer reads from their own copy of the raft log)."""
        assert self.cluster is not None
        request = urllib.request.Request(
            f"{node.probe_address}/v1/{self.mount}/keys/{key_id}",
            headers={"X-Vault-Token": self.cluster.token},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def auth_events(self) -> dict[str, dict[str, int]]:
        """Per replica, how many Vault logins, renewals and auth losses its log shows."""
        counted = {}
        for replica in self.replicas:
            text = replica.log_path.read_text(errors="replace")
            counted[replica.host] = {
                name: text.count(f'"event": "vault_{event}"')
                for name, event in (
                    ("logins", "login"),
                    ("renewals", "token_renewed"),
                    ("lost", "auth_lost"),
                )
            }
        return counted

    def stop(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.stop()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.remove()
        if self.balancer is not None:
            self.balancer.close()
        if self.cluster is not None:
            self.cluster.stop()
        for forwarder in self.forwarders:
            forwarder.close()
        self.network.destroy()
