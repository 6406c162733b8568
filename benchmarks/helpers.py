"""Shared pieces of the benchmarks: sizes, server processes with metrics, and fills.

Fills (subjects, records) are never timed: they go through a server with 8 client
threads for subjects (~4 Transit round trips each) and BatchCreateRecords for records.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from oubli_client import NewRecord, OubliClient, Record
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import free_port

MESSAGE = "x" * 1000  # with names and ids a record's request is ~1 KiB
CATEGORY, FIELD, PURPOSE, ORIGIN = "support", "message", "support", "bench"
BATCH = 1000  # the batch RPCs' maximum
FILL_THREADS = 8


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each benchmark is: full when timing, tiny for the smoke run."""

    timed: bool
    put_records: int  # records per batch put call
    put_subjects: int  # spread over this many subjects
    get_records: int  # records per batch get call, one per subject
    cold_rounds: int  # batch get cold: fresh subjects per round
    export_records: int  # records of the exported subject
    export_rounds: int
    shred_batch: int  # subjects per batch shred call
    shred_rounds: int
    unary_shreds: int  # rounds of the unary shred
    retention_subjects: int  # due subjects of the retention run


FULL = Sizes(
    timed=True,
    put_records=1000,
    put_subjects=100,
    get_records=1000,
    cold_rounds=3,
    export_records=100_000,
    export_rounds=2,
    shred_batch=1000,
    shred_rounds=3,
    unary_shreds=100,
    retention_subjects=10_000,
)
SMOKE = Sizes(
    timed=False,
    put_records=50,
    put_subjects=10,
    get_records=50,
    cold_rounds=1,
    export_records=2_000,
    export_rounds=1,
    shred_batch=20,
    shred_rounds=1,
    unary_shreds=1,
    retention_subjects=100,
)

_KMS_CALLS = re.compile(r'^oubli_kms_calls_total\{backend="([^"]*)"\} ([0-9.e+]+)$', re.M)


class MeteredServer(ServerProcess):
    """``oubli serve`` in its own process, with Prometheus metrics on a free port."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        super().__init__(
            workdir, *args, "--metrics-listen", f"127.0.0.1:{self.metrics_port}", env=env
        )

    def kms_calls(self) -> int:
        """``oubli_kms_calls_total`` now: KMS round trips this process has made."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        found = _KMS_CALLS.findall(body)
        if not found:
            raise RuntimeError(f"no oubli_kms_calls_total in the metrics:\n{body}")
        return sum(int(float(value)) for _backend, value in found)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB: resident memory now, and its peak since the start."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024  # kB
        return values["VmRSS"], values["VmHWM"]


@dataclass
class Deployment:
    """One database and one Transit mount, on which several oubli processes may run."""

    kind: str  # sqlite | postgresql
    database_url: str
    flags: list[str]
    env: dict[str, str]
    workdir: Path
    started: list[MeteredServer] = field(default_factory=list)

    def server(self, name: str, *extra: str) -> MeteredServer:
        """A new server process on this database and mount, with ``extra`` flags
        (stopped by ``stop_all``)."""
        server = MeteredServer(self.workdir / name, "serve", *self.flags, *extra, env=self.env)
        self.started.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()
        self.started.clear()


def client_for(server: ServerProcess, timeout: float = 120.0) -> OubliClient:
    return OubliClient(server.target, token=server.token, timeout=timeout)


def create_subjects(client: OubliClient, count: int, threads: int = FILL_THREADS) -> list[str]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: client.create_subject().subject_id, range(count)))


def new_record(subject_id: str) -> NewRecord:
    return NewRecord(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN)


def store(client: OubliClient, records: Iterable[NewRecord]) -> list[Record]:
    """Store the records, 1 000 per BatchCreateRecords call, in order."""
    pending = list(records)
    stored: list[Record] = []
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        created = client.batch_create_records(batch)
        assert [r.subject_id for r in created] == [r.subject_id for r in batch]
        stored += created
    return stored


def subjects_with_records(client: OubliClient, count: int, per_subject: int) -> list[Record]:
    """``count`` new subjects with ``per_subject`` records each; the first record of
    each subject comes first, in subject order."""
    subjects = create_subjects(client, count)
    return store(client, [new_record(s) for _ in range(per_subject) for s in subjects])


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
