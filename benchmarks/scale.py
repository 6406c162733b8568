"""Scale benchmark (issue 5): does oubli stay fast with 100 000 subjects?

    .venv/bin/python -m benchmarks.scale --subjects 100000 --records 1000000 \\
        --out benchmarks/scale-results.json [--database postgresql]

One OpenBao with persistent raft storage (OpenBaoRaftServer) holds one Transit key per
subject, behind a bounded Transit key cache (--key-cache, default 20 000: a fifth of
the keys). oubli runs as its own process, exactly as in benchmarks/conftest.py, with
its default DEK cache (10 000 entries, 60 s TTL).

The vault is filled to --small subjects first and measured, then filled on to
--subjects and measured again; records are spread evenly (--records / --subjects per
subject, 1 000-character messages). At each size, one client measures, one call at a
time: unary get of random existing records, unary put to random subjects, and shred
of dedicated subjects (min(--samples, size) extra subjects with the same number of
records, created after get/put are measured, so that the vault is back at its size
once they are shredded). The result is p50/p99 per op and size, the ratio large/small
(target: within 1.5x), the resident memory of OpenBao and oubli, and the disk used by
the raft data and oubli's database. Progress goes to stderr; the markdown table for
docs/performance.md to stdout, the JSON to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import hvac
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oubli_client import NewRecord, OubliClient
from oubli_client.errors import OubliClientError
from tests.conftest import PG_ADMIN_URL
from tests.integration.processes import ServerProcess
from vault.app.config import ServerConfig
from vault.app.openbao_process import OpenBaoRaftServer

MESSAGE = "x" * 1000
CATEGORY, FIELD, PURPOSE, ORIGIN = "support", "message", "support", "bench"
BATCH = 1000  # BatchCreateRecords' maximum
OPS = ("get", "put", "get_warm", "put_warm", "shred")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=100_000, help="full size")
    parser.add_argument("--records", type=int, default=1_000_000, help="records at full size")
    parser.add_argument("--small", type=int, default=1_000, help="comparison size (subjects)")
    parser.add_argument("--samples", type=int, default=2_000, help="latency samples per op")
    parser.add_argument("--key-cache", type=int, default=20_000, help="Transit key cache size")
    parser.add_argument("--threads", type=int, default=8, help="client threads for the fill")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--work-dir", type=Path, help="keep OpenBao/oubli data here")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale-results.json"))
    args = parser.parse_args(argv)
    if not 0 < args.small < args.subjects or args.records < args.subjects or args.samples < 2:
        parser.error("need 0 < --small < --subjects <= --records and --samples >= 2")
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Reservoir:
    """A uniform random sample of the (subject, record) ids stored so far (algorithm R).

    Keeping all 1 000 000 ids would cost the client ~200 MB and long GC pauses that
    would show up in its p99; gets only need a uniform sample.
    """

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.items: list[tuple[str, str]] = []
        self.seen = 0
        self._capacity = capacity
        self._rng = rng

    def add(self, subject_id: str, record_id: str) -> None:
        self.seen += 1
        if len(self.items) < self._capacity:
            self.items.append((subject_id, record_id))
        else:
            slot = self._rng.randrange(self.seen)
            if slot < self._capacity:
                self.items[slot] = (subject_id, record_id)


def new_record(subject_id: str) -> NewRecord:
    return NewRecord(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN)


def ignore(subject_id: str, record_id: str) -> None:
    """The sink for records nobody will read (the shred victims')."""


class Filler:
    """Creates subjects (in parallel: ~4 Transit round trips each) and their records
    (BatchCreateRecords, 1 000 per call)."""

    def __init__(self, client: OubliClient, threads: int) -> None:
        self.client = client
        self.threads = threads
        self.batch_api = True

    def subjects(self, count: int, label: str) -> list[str]:
        step = max(count // 20, 4 * self.threads)  # ~5% progress, all threads busy
        created: list[str] = []
        started = time.perf_counter()
        with ThreadPoolExecutor(self.threads) as pool:
            while len(created) < count:
                chunk = min(step, count - len(created))
                created += pool.map(lambda _: self.client.create_subject().subject_id, range(chunk))
                rate = len(created) / (time.perf_counter() - started)
                progress(f"  {label}: {len(created)}/{count} subjects ({rate:.0f}/s)")
        return created

    def records(
        self, subjects: Sequence[str], count: int, label: str, sink: Callable[[str, str], None]
    ) -> None:
        """``count`` records spread evenly over ``subjects``, each subject's together;
        ``sink`` gets each stored (subject, record) id. Batches are built as they are
        sent (a million records built up front would cost the client hundreds of MB)."""
        workers = min(self.threads, 4)  # SQLite has one writer: more would only queue
        report_every = max(1, count // 20)
        stored = reported = 0
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[Future[list[tuple[str, str]]]] = deque()
            for start in range(0, count, BATCH):
                end = min(start + BATCH, count)
                owners = [subjects[i * len(subjects) // count] for i in range(start, end)]
                pending.append(pool.submit(self._store, [new_record(s) for s in owners]))
                while pending and (len(pending) > 2 * workers or start + BATCH >= count):
                    for subject_id, record_id in pending.popleft().result():
                        sink(subject_id, record_id)
                        stored += 1
                    if stored - reported >= report_every or stored == count:
                        reported = stored
                        rate = stored / (time.perf_counter() - started)
                        progress(f"  {label}: {stored}/{count} records ({rate:.0f}/s)")

    def _store(self, batch: list[NewRecord]) -> list[tuple[str, str]]:
        if self.batch_api:
            try:
                return [
                    (r.subject_id, r.record_id) for r in self.client.batch_create_records(batch)
                ]
            except OubliClientError as e:
                # Fallback while a server without BatchCreateRecords is being measured:
                # the same records one CreateRecord at a time (slower fill, same data).
                if e.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                progress("  BatchCreateRecords is UNIMPLEMENTED: falling back to CreateRecord")
                self.batch_api = False
        created = [
            self.client.create_record(r.subject_id, r.category, r.fields, r.origin) for r in batch
        ]
        return [(r.subject_id, r.record_id) for r in created]


def latencies_ms(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float | int]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"samples": len(samples), "p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = round(int(rest.split()[0]) / 1024, 1)  # kB
    return {"rss_mib": values["VmRSS"], "peak_rss_mib": values["VmHWM"]}


def disk_mib(path: Path) -> float:
    """Space allocated to the files under ``path`` (raft's bbolt file is sparse-ish)."""
    blocks = sum(p.stat().st_blocks for p in path.rglob("*") if p.is_file())
    return round(blocks * 512 / 2**20, 1)


class Bench:
    def __init__(self, args: argparse.Namespace, client: OubliClient, filler: Filler) -> None:
        self.args = args
        self.client = client
        self.filler = filler
        self.rng = random.Random(args.seed)
        self.subjects: list[str] = []
        self.reservoir = Reservoir(max(20 * args.samples, 10_000), self.rng)
        self.filled = 0  # records the fill stored
        self.records = 0  # and with the measured puts

    def fill_to(self, subjects: int, label: str) -> dict[str, float]:
        count = subjects - len(self.subjects)
        records = self.args.records * subjects // self.args.subjects - self.filled
        started = time.perf_counter()
        new = self.filler.subjects(count, label)
        subjects_s = time.perf_counter() - started
        self.filler.records(new, records, label, self.reservoir.add)
        self.subjects += new
        self.filled += records
        self.records += records
        total_s = time.perf_counter() - started
        return {
            "subjects_per_s": round(count / subjects_s, 1),
            "records_per_s": round(records / (total_s - subjects_s), 1),
            "seconds": round(total_s, 1),
        }

    def measure(self, label: str) -> dict[str, Any]:
        samples, rng, client = self.args.samples, self.rng, self.client
        progress(f"  {label}: measuring get, put, shred ({samples} samples each)")
        gc.collect()  # not during the samples
        results: dict[str, Any] = {}
        reads = self.reservoir.items
        # Random records: at 100 000 subjects most are cold (their DEK is not in oubli's
        # cache, so the read unwraps it through Transit); at 1 000 most are warm.
        get = latencies_ms(lambda: client.get_record(*rng.choice(reads), PURPOSE), samples)
        results["get"] = summary(get)
        put = latencies_ms(
            lambda: client.create_record(
                rng.choice(self.subjects), CATEGORY, {FIELD: MESSAGE}, ORIGIN
            ),
            samples,
        )
        results["put"] = summary(put)
        # The hot path at each size: subjects read once just before (DEKs cached), so
        # what differs between sizes is the database and nothing else.
        hot = [rng.choice(reads) for _ in range(min(samples, 500))]
        for subject_id, record_id in hot:
            client.get_record(subject_id, record_id, PURPOSE)
        cycle = iter(hot * (samples // len(hot) + 1))
        results["get_warm"] = summary(
            latencies_ms(lambda: client.get_record(*next(cycle), PURPOSE), samples)
        )
        cycle = iter(hot * (samples // len(hot) + 1))
        results["put_warm"] = summary(
            latencies_ms(
                lambda: client.create_record(next(cycle)[0], CATEGORY, {FIELD: MESSAGE}, ORIGIN),
                samples,
            )
        )
        self.records += 2 * samples
        victims = min(samples, len(self.subjects))
        per_subject = max(1, self.args.records // self.args.subjects)
        doomed = self.filler.subjects(victims, f"{label} shred victims")
        self.filler.records(doomed, victims * per_subject, f"{label} shred victims", ignore)
        pending = iter(doomed)
        results["shred"] = summary(
            latencies_ms(lambda: client.shred_subject(next(pending)), victims)
        )
        return results


@contextmanager
def database(kind: str, work: Path) -> Iterator[tuple[list[str], Callable[[], float]]]:
    """The ``oubli serve`` flags for the database, and how to measure its size (MiB)."""
    if kind == "sqlite":
        data = work / "oubli-data"
        yield ["--data-dir", str(data)], lambda: disk_mib(data)
        return
    name = f"oubli_scale_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def size() -> float:
        with admin.connect() as c:
            row = c.execute(text("SELECT pg_database_size(:n)"), {"n": name}).scalar_one()
        return round(int(row) / 2**20, 1)

    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield ["--database-url", url], size
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def transit_cache_size(bao: OpenBaoRaftServer) -> int:
    """The key cache size oubli set on the mount (OUBLI_VAULT_CACHE_SIZE), read back."""
    client = hvac.Client(url=bao.address, token=bao.token)
    try:
        return int(client.read("transit/cache-config")["data"]["size"])
    finally:
        client.adapter.close()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with (
        OpenBaoRaftServer(work / "openbao-raft", log_path=work / "openbao.log") as bao,
        database(args.database, work) as (db_flags, db_size),
    ):
        env = {"VAULT_TOKEN": bao.token, "OUBLI_VAULT_CACHE_SIZE": str(args.key_cache)}
        flags = ["--kms", "vault", "--vault-addr", bao.address, "--vault-mount", "transit"]
        with (
            ServerProcess(work / "oubli", "serve", *db_flags, *flags, env=env) as server,
            OubliClient(server.target, token=server.token, timeout=60) as client,
        ):
            assert bao.pid is not None and server.process is not None
            key_cache = transit_cache_size(bao)
            if key_cache != args.key_cache:
                raise RuntimeError(f"Transit key cache is {key_cache}, not {args.key_cache}")
            bench = Bench(args, client, Filler(client, args.threads))
            sizes: dict[str, Any] = {}
            for label, subjects in (("small", args.small), ("large", args.subjects)):
                progress(f"{label}: filling to {subjects} subjects")
                fill = bench.fill_to(subjects, label)
                ops = bench.measure(label)
                sizes[label] = {
                    "subjects": len(bench.subjects),
                    "records": bench.records,
                    "fill": fill,
                    "ops": ops,
                    "openbao": rss_mib(bao.pid),
                    "oubli": rss_mib(server.process.pid),
                    "openbao_raft_disk_mib": disk_mib(work / "openbao-raft"),
                    "oubli_db_mib": db_size(),
                }
            batch_api = bench.filler.batch_api
    defaults = ServerConfig()
    return {
        "config": {
            "database": args.database,
            "transit_key_cache_size": key_cache,
            "oubli_dek_cache_entries": defaults.cache_entries,
            "oubli_dek_cache_ttl_seconds": defaults.cache_ttl_seconds,
            "message_chars": len(MESSAGE),
            "fill_threads": args.threads,
            "fill_with_batch_api": batch_api,
            "cpus": os.cpu_count(),
        },
        "sizes": sizes,
        "ratios": {
            op: {
                q: round(sizes["large"]["ops"][op][q] / sizes["small"]["ops"][op][q], 2)
                for q in ("p50_ms", "p99_ms")
            }
            for op in OPS
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    small, large = result["sizes"]["small"], result["sizes"]["large"]
    lines = [
        "| subjects | records | op | p50 ms | p99 ms | ratio to small (p50 / p99) |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for size in (small, large):
        for op in OPS:
            stats = size["ops"][op]
            ratio = (
                "1 / 1"
                if size is small
                else f"{result['ratios'][op]['p50_ms']} / {result['ratios'][op]['p99_ms']}"
            )
            lines.append(
                f"| {size['subjects']:,} | {size['records']:,} | {op} | {stats['p50_ms']} "
                f"| {stats['p99_ms']} | {ratio} |"
            )
    lines += [
        "",
        "| subjects | OpenBao RSS MiB (peak) | oubli RSS MiB (peak) | raft disk MiB | DB MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in (small, large):
        bao, oubli = size["openbao"], size["oubli"]
        lines.append(
            f"| {size['subjects']:,} | {bao['rss_mib']} ({bao['peak_rss_mib']}) "
            f"| {oubli['rss_mib']} ({oubli['peak_rss_mib']}) "
            f"| {size['openbao_raft_disk_mib']} | {size['oubli_db_mib']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.work_dir)
    else:
        work = Path(tempfile.mkdtemp(prefix="oubli-scale-"))
        try:
            result = run(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
