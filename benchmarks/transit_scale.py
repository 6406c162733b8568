"""Transit at scale (issue 14): 10^6 Transit keys in a raft OpenBao with a bounded key cache.

    nice -n 15 .venv/bin/python -m benchmarks.transit_scale --keys 1000000 \\
        --measure-at 100000 300000 600000 --threads 32 \\
        --out docs/perf/transit-scale-2026-12-02.json [--stop-creating-at UNIX_TIME]

OpenBao only, no oubli process: one single-node OpenBao on Integrated Storage (raft,
OpenBaoRaftServer, in a temporary directory unless --work-dir), Transit mounted with the
settings oubli writes (``disable_upsert``) and a bounded key cache (``cache-config``
``size`` = --key-cache). OpenBao applies a written size at once (its ``cache-config``
write replaces the mount's cache; Vault's docs say a reload is needed): the benchmark
restarts it anyway before any key exists, and reads the size back with OpenBao's
warnings (a read warns, and re-applies, when the size in use differs from the stored).

Keys are made the way oubli makes a subject's key (kms/vault_transit.py): a random
26-character name, ``aes256-gcm96``, not exportable, no plaintext backup, then a
``/config`` write for ``deletion_allowed`` — two raft writes per key, one with
--no-deletion-config — by --threads concurrent HTTP requests over one keep-alive
session. For --samples keys spread evenly over each measured size, a 32-byte DEK is
wrapped at creation (``datakey/plaintext``, as oubli does). At each size of --measure-at
and at --keys, OpenBao is restarted (so the key cache is empty: every sample is a cold
key) and the benchmark records OpenBao's resident memory after the restart, after the
cold unwraps, after the warm ones, and after reading twice --key-cache keys (the cache
full and evicting) — VmRSS / VmHWM, and RssAnon (the heap) / RssFile (raft's
memory-mapped bbolt files) — the raft disk (allocated blocks of every file under the
raft directory: the FSM's vault.db, the log store raft/raft.db, raft/snapshots), the
restart time, and the unwrap latency (``decrypt`` of one sample DEK, one call at a
time): each sample once with a cold cache, then each again (warm). Each unwrapped DEK is
checked against the one created. With --stop-creating-at, creation stops at that time
and the size reached is measured (with the wrapped samples nearest to even steps over
it).

Progress goes to stderr, the JSON to --out (rewritten after every measured size, so a run
cut short keeps what it measured), the markdown table for docs/performance.md to stdout.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from vault.app.openbao_process import OpenBaoRaftServer, find_bao
from vault.ids import new_id

MOUNT = "transit"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks.transit_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--keys", type=int, default=1_000_000, help="Transit keys at the end")
    parser.add_argument(
        "--measure-at", type=int, nargs="*", default=[100_000], help="also measure at these sizes"
    )
    parser.add_argument("--samples", type=int, default=2_000, help="cold keys unwrapped per size")
    parser.add_argument("--key-cache", type=int, default=10_000, help="Transit key cache size")
    parser.add_argument("--threads", type=int, default=16, help="concurrent key creations")
    parser.add_argument(
        "--no-deletion-config",
        action="store_true",
        help="skip the deletion_allowed write (one raft write per key instead of oubli's two)",
    )
    parser.add_argument(
        "--stop-creating-at",
        type=float,
        help="a Unix time: stop creating keys then and measure the size reached",
    )
    parser.add_argument("--work-dir", type=Path, help="keep the OpenBao data here")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/transit-scale.json"))
    args = parser.parse_args(argv)
    args.sizes = sorted({s for s in args.measure_at if 0 < s < args.keys} | {args.keys})
    if args.keys < 1 or args.samples < 2 or args.key_cache < 10:
        parser.error("need --keys >= 1, --samples >= 2, --key-cache >= 10 (OpenBao's minimum)")
    return args


def progress(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), from /proc; split into
    anonymous memory (the Go heap: key cache, raft) and file pages (raft's bbolt files
    are memory-mapped: pages read count here, and the kernel reclaims them under
    pressure)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[name] = round(int(rest.split()[0]) / 1024, 1)  # kB
    return {
        "rss_mib": values["VmRSS"],
        "peak_rss_mib": values["VmHWM"],
        "anon_mib": values["RssAnon"],
        "file_mib": values["RssFile"],
    }


def disk(path: Path) -> dict[str, Any]:
    """Allocated MiB under ``path`` in all, and per top-level file or directory."""

    def allocated(p: Path) -> int:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        return sum(f.stat().st_blocks * 512 for f in files)

    parts = {p.name: allocated(p) for p in sorted(path.iterdir())}
    parts.update({f"raft/{p.name}": allocated(p) for p in sorted((path / "raft").iterdir())})
    parts.pop("raft", None)
    total = sum(allocated(p) for p in path.iterdir())
    return {
        "total_bytes": total,
        "total_mib": round(total / 2**20, 1),
        "parts_mib": {name: round(size / 2**20, 1) for name, size in parts.items() if size},
    }


def summary(samples: list[float]) -> dict[str, float | int]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "samples": len(samples),
        "p50_ms": round(cuts[49], 3),
        "p99_ms": round(cuts[98], 3),
        "max_ms": round(max(samples), 3),
    }


def sample_indices(sizes: Sequence[int], samples: int) -> dict[int, list[int]]:
    """For each size, ``samples`` key indices spread evenly over the keys made so far."""
    return {
        size: sorted({i * size // samples for i in range(min(samples, size))}) for size in sizes
    }


class Transit:
    """The few OpenBao HTTP calls the benchmark makes, over one pooled keep-alive session."""

    def __init__(self, address: str, token: str, pool: int) -> None:
        self.base = f"{address}/v1"
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
        self.session.headers["X-Vault-Token"] = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.session.request(method, f"{self.base}/{path}", json=body, timeout=120)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
        result: dict[str, Any] = answer.json() if answer.content else {}
        return result

    def create_key(self, name: str, allow_deletion: bool) -> None:
        """As oubli's VaultTransitKms.create_key: create, then allow deletion."""
        self.call(
            "POST",
            f"{MOUNT}/keys/{name}",
            {"type": "aes256-gcm96", "exportable": False, "allow_plaintext_backup": False},
        )
        if allow_deletion:
            self.call("POST", f"{MOUNT}/keys/{name}/config", {"deletion_allowed": True})

    def data_key(self, name: str) -> tuple[bytes, str]:
        data = self.call("POST", f"{MOUNT}/datakey/plaintext/{name}", {"bits": 256})["data"]
        return base64.b64decode(data["plaintext"]), str(data["ciphertext"])

    def unwrap(self, name: str, ciphertext: str) -> bytes:
        data = self.call("POST", f"{MOUNT}/decrypt/{name}", {"ciphertext": ciphertext})["data"]
        return base64.b64decode(data["plaintext"])

    def close(self) -> None:
        self.session.close()


class Bench:
    def __init__(self, args: argparse.Namespace, bao: OpenBaoRaftServer) -> None:
        self.args = args
        self.bao = bao
        self.transit: Transit | None = None
        self.created = 0
        self.sampled = sample_indices(args.sizes, args.samples)
        self.wanted = set().union(*self.sampled.values())
        self.deks: dict[int, tuple[str, bytes, str]] = {}  # index -> name, DEK, wrapped
        # the first keys made, twice the cache: read after the unwraps to fill the cache
        self.fillers: dict[int, str] = {}
        self.rng = random.Random(args.seed)

    @property
    def client(self) -> Transit:
        if self.transit is None:
            self.transit = Transit(self.bao.address, self.bao.token, self.args.threads)
        return self.transit

    def restart(self) -> float:
        """Stop and start OpenBao (same data, same unseal key): its key cache is empty."""
        if self.transit is not None:
            self.transit.close()
            self.transit = None
        self.bao.stop()
        started = time.perf_counter()
        self.bao.start(timeout=1800)
        return round(time.perf_counter() - started, 1)

    def setup(self) -> dict[str, Any]:
        self.client.call("POST", f"sys/mounts/{MOUNT}", {"type": "transit"})
        self.client.call("POST", f"{MOUNT}/config/keys", {"disable_upsert": True})
        written = self.client.call("POST", f"{MOUNT}/cache-config", {"size": self.args.key_cache})
        before_restart = self.cache_config()
        self.restart()  # the mount reads its cache size when it starts
        after_restart = self.cache_config()
        if after_restart != {"size": self.args.key_cache, "warnings": []}:
            raise RuntimeError(f"Transit key cache is not {self.args.key_cache}: {after_restart}")
        return {
            "transit_key_cache_size": after_restart["size"],
            # what OpenBao says about a cache size written to a running mount
            "cache_config_write_warnings": written.get("warnings") or [],
            "cache_config_read_before_restart": before_restart,
        }

    def cache_config(self) -> dict[str, Any]:
        """The stored cache size, and OpenBao's warnings: a read warns while the size in
        use differs from the stored one (until the mount is reloaded)."""
        answer = self.client.call("GET", f"{MOUNT}/cache-config")
        return {"size": int(answer["data"]["size"]), "warnings": answer.get("warnings") or []}

    def _make(self, index: int) -> None:
        name = new_id()
        self.client.create_key(name, allow_deletion=not self.args.no_deletion_config)
        if index < 2 * self.args.key_cache:
            self.fillers[index] = name
        if index in self.wanted:
            dek, wrapped = self.client.data_key(name)
            self.deks[index] = (name, dek, wrapped)

    def create_to(self, size: int) -> dict[str, float]:
        first = self.created
        step = max(self.args.threads * 8, min((size - first) // 100, 2_000))
        started = time.perf_counter()
        last_report = started
        _ = self.client  # made before the threads share it
        with ThreadPoolExecutor(self.args.threads) as pool:
            # at least one chunk: a size of 0 keys would measure nothing
            while self.created < size and not (self.created > first and self.out_of_time()):
                chunk = range(self.created, min(self.created + step, size))
                list(pool.map(self._make, chunk))
                self.created = chunk.stop
                now = time.perf_counter()
                if now - last_report >= 30 or self.created == size or self.out_of_time():
                    last_report = now
                    rate = (self.created - first) / (now - started)
                    progress(f"{self.created}/{self.args.keys} keys ({rate:.0f} keys/s)")
        seconds = time.perf_counter() - started
        count = self.created - first
        return {
            "keys_created": count,
            "seconds": round(seconds, 1),
            "keys_per_s": round(count / seconds, 1),
        }

    def out_of_time(self) -> bool:
        deadline = self.args.stop_creating_at
        return deadline is not None and time.time() >= deadline

    def samples_for(self, size: int) -> list[tuple[str, bytes, str]]:
        """The planned samples of ``size``; for a size cut short by the deadline, of the
        keys with a wrapped DEK, those nearest to ``samples`` even steps over the size."""
        if size in self.sampled:
            return [self.deks[i] for i in self.sampled[size]]
        have = sorted(i for i in self.deks if i < size)
        targets = sample_indices([size], self.args.samples)[size]
        chosen = {have[min(bisect.bisect_left(have, t), len(have) - 1)] for t in targets}
        return [self.deks[i] for i in sorted(chosen)]

    def unwrap_all(self, samples: list[tuple[str, bytes, str]]) -> list[float]:
        latencies = []
        for name, dek, wrapped in samples:
            started = time.perf_counter()
            plaintext = self.client.unwrap(name, wrapped)
            latencies.append((time.perf_counter() - started) * 1000)
            if plaintext != dek:
                raise RuntimeError("an unwrapped DEK differs from the one created")
        return latencies

    def measure(self, size: int) -> dict[str, Any]:
        progress(f"{size} keys: restarting OpenBao (cold key cache)")
        restart_s = self.restart()
        assert self.bao.pid is not None
        raft = disk(self.bao.data_dir)
        cache = self.cache_config()
        memory = {"after_restart": rss_mib(self.bao.pid)}
        samples = self.samples_for(size)
        self.rng.shuffle(samples)
        progress(f"{size} keys: {len(samples)} cold unwraps")
        cold = self.unwrap_all(samples)
        memory["after_cold_unwraps"] = rss_mib(self.bao.pid)
        warm = self.unwrap_all(samples)
        memory["after_warm_unwraps"] = rss_mib(self.bao.pid)
        # Every key read (its policy loaded) once: the cache full, the LRU evicting.
        progress(f"{size} keys: reading {len(self.fillers)} keys to fill the key cache")
        for name in self.fillers.values():
            self.client.call("GET", f"{MOUNT}/keys/{name}")
        memory["after_cache_filled"] = rss_mib(self.bao.pid)
        return {
            "keys": size,
            "restart_seconds": restart_s,
            "transit_cache_config": cache,
            "raft_disk": raft,
            "raft_disk_bytes_per_key": round(raft["total_bytes"] / size, 1),
            "openbao_memory_mib": memory,
            "keys_read_to_fill_cache": len(self.fillers),
            "unwrap_cold": summary(cold),
            "unwrap_warm": summary(warm),
            "cold_to_warm_p50": round(statistics.median(cold) / statistics.median(warm), 2),
        }


def bao_version() -> str:
    answer = subprocess.run([find_bao(), "version"], capture_output=True, text=True, check=True)
    return answer.stdout.strip()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "config": {
            "openbao": bao_version(),
            "key_type": "aes256-gcm96",
            "writes_per_key": 1 if args.no_deletion_config else 2,
            "threads": args.threads,
            "samples": args.samples,
            "cpus": os.cpu_count(),
            "nice": os.nice(0),
        },
        "sizes": [],
        "complete": False,
    }
    with OpenBaoRaftServer(work / "openbao-raft", log_path=work / "openbao.log") as bao:
        bench = Bench(args, bao)
        result["config"].update(bench.setup())
        progress(f"OpenBao ready, key cache {args.key_cache}; creating {args.keys} keys")
        for planned in args.sizes:
            creation = bench.create_to(planned)
            size = bench.created
            measured = bench.measure(size)
            measured["creation"] = creation
            result["sizes"].append(measured)
            result["seconds"] = round(time.perf_counter() - started, 1)
            result["complete"] = size == args.keys
            write(args.out, result)
            progress(f"{size} keys: {json.dumps(measured)}")
            if size < planned:
                progress(f"stopped creating at the deadline, {size} of {args.keys} keys")
                break
    return result


def write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| keys | raft disk MiB (bytes/key) "
        "| OpenBao RSS MiB: restart / cold / warm / cache full (anon: restart / cache full) "
        "| cold unwrap p50 / p99 / max ms | warm unwrap p50 / p99 ms | cold/warm p50 "
        "| restart s | creation keys/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in result["sizes"]:
        memory = size["openbao_memory_mib"]
        cold, warm = size["unwrap_cold"], size["unwrap_warm"]
        lines.append(
            f"| {size['keys']:,} | {size['raft_disk']['total_mib']} "
            f"({size['raft_disk_bytes_per_key']:.0f}) "
            f"| {memory['after_restart']['rss_mib']} / {memory['after_cold_unwraps']['rss_mib']} "
            f"/ {memory['after_warm_unwraps']['rss_mib']} "
            f"/ {memory['after_cache_filled']['rss_mib']} ({memory['after_restart']['anon_mib']} "
            f"/ {memory['after_cache_filled']['anon_mib']}) "
            f"| {cold['p50_ms']} / {cold['p99_ms']} / {cold['max_ms']} "
            f"| {warm['p50_ms']} / {warm['p99_ms']} | {size['cold_to_warm_p50']} "
            f"| {size['restart_seconds']} | {size['creation']['keys_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.work_dir)
    else:
        work = Path(tempfile.mkdtemp(prefix="oubli-transit-scale-"))
        try:
            result = run(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
