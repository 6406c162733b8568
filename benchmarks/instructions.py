"""Server instructions per call, counted by valgrind's callgrind: echo, oubli get and put.

    .venv/bin/python -m benchmarks.instructions [--calls 300] [--warmup 50] [--out FILE]

Wall time wobbles on a shared 2-core machine; the instructions a server executes per
call do not. Each server runs under ``valgrind --tool=callgrind --instr-atstart=no``
(no counting while it starts), is warmed up with ``--warmup`` calls, then counted
(``callgrind_control --instr=on``) over ``--calls`` calls and dumped
(``callgrind_control --dump``): the dump's ``totals:`` line is every instruction the
server process executed in that window, in all its threads (gRPC's, Python's),
divided by the calls. oubli's audit entries are sealed into the chain once each, in one
batch at the end of the window (one QueryAudit, counted), not by the background sealer:
how many of its ticks land in a window depends on how long the calls take. Only the
server is counted: the client runs natively in this process, and oubli uses its local
keystore (no OpenBao) on SQLite.

Measured in one run: the bare gRPC echo (benchmarks/echo_server.py, sent a serialized
``CreateRecordRequest`` of a 1 KiB record), then one oubli server for GetRecord (one
record, read again and again) and CreateRecord (1 KiB records into one subject). Prints
a markdown table with the ratios to the echo; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from benchmarks.helpers import CATEGORY, FIELD, MESSAGE, ORIGIN, PURPOSE
from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb
from tests.integration.processes import ServerProcess

#: Calls counted, and calls made before counting starts (caches, lazy imports).
CALLS, WARMUP = 300, 50
#: A server under valgrind starts 10-50x slower than natively.
START_SECONDS = 600.0
_TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.M)


def valgrind() -> str:
    """valgrind's path; RuntimeError when it is not installed (Debian: valgrind)."""
    found = shutil.which("valgrind")
    if found is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    return found


class Callgrind:
    """Runs a server under callgrind with counting off; counts a window of calls."""

    def __init__(self, out_file: Path) -> None:
        self.out_file = out_file
        self._dumps = 0

    def launcher(self) -> tuple[str, ...]:
        return (
            valgrind(),
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out_file}",
        )

    def count(
        self,
        pid: int,
        calls: int,
        call: Callable[[], object],
        settle: Callable[[], object] = lambda: None,
    ) -> float:
        """Instructions the process ``pid`` executes per ``call()``, over ``calls`` calls
        and one ``settle()`` after them (work the calls left to do: counted, once)."""
        settle()  # what was left before the window is not counted
        _control("--zero", pid)
        _control("--instr=on", pid)
        for _ in range(calls):
            call()
        settle()
        _control("--dump", pid)
        _control("--instr=off", pid)
        self._dumps += 1
        dump = Path(f"{self.out_file}.{self._dumps}")
        deadline = time.monotonic() + 60
        while not (dump.exists() and _TOTALS.search(dump.read_bytes())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"callgrind wrote no dump at {dump}")
            time.sleep(0.1)
        found = _TOTALS.search(dump.read_bytes())
        assert found is not None
        return int(found.group(1)) / calls


def _control(option: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", option, str(pid)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def echo_instructions(work: Path, calls: int, warmup: int) -> float:
    """The bare gRPC echo's instructions per call."""
    callgrind = Callgrind(work / "echo.callgrind")
    port_file = work / "echo.port"
    log = open(work / "echo.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [*callgrind.launcher(), sys.executable, "-m", "benchmarks.echo_server", str(port_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the echo server did not start under valgrind")
            time.sleep(0.1)
        payload = pb.CreateRecordRequest(
            subject_id="0" * 26, category=CATEGORY, fields={FIELD: MESSAGE}, origin=ORIGIN
        ).SerializeToString()
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            echo = channel.unary_unary("/bench.Echo/Echo")
            for _ in range(warmup):
                echo(payload, timeout=120)
            return callgrind.count(process.pid, calls, lambda: echo(payload, timeout=120))
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # seen once under valgrind: the count is taken
            process.kill()
            process.wait()
        log.close()


def oubli_instructions(work: Path, calls: int, warmup: int) -> tuple[float, float]:
    """(get, put): oubli's instructions per GetRecord and per CreateRecord, SQLite and
    the local keystore, one server."""
    callgrind = Callgrind(work / "oubli.callgrind")
    server = ServerProcess(
        work / "oubli",
        "serve",
        "--data-dir",
        str(work / "oubli" / "data"),
        # No restore fence pass in a counted window: it is not per-call work.
        "--fence-interval",
        "86400",
        launcher=callgrind.launcher(),
        # Nor a checkpoint (a signature every 300 s, landing in one window or another),
        # nor the sealer's ticks (0.2 s by default): how many land in a window depends
        # on how long the calls take under valgrind. Each window's entries are sealed
        # once, in one batch, by the QueryAudit that ends it (settle, below).
        env={"OUBLI_AUDIT_CHECKPOINT_SECONDS": "86400", "OUBLI_AUDIT_SEAL_SECONDS": "86400"},
    )
    server.start(timeout=START_SECONDS)
    try:
        assert server.process is not None
        pid = server.process.pid
        with OubliClient(server.target, token=server.token, timeout=120) as client:
            subject_id = client.create_subject().subject_id
            record = client.create_record(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN)

            def get() -> object:
                return client.get_record(subject_id, record.record_id, PURPOSE)

            def put() -> object:
                return client.create_record(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN)

            def seal() -> object:
                # A first page of QueryAudit seals every entry recorded before it.
                return client.query_audit(subject_id=subject_id, limit=1)

            for _ in range(warmup):
                get()
                put()
            return (
                callgrind.count(pid, calls, get, settle=seal),
                callgrind.count(pid, calls, put, settle=seal),
            )
    finally:
        server.stop()


def measure(calls: int = CALLS, warmup: int = WARMUP) -> dict[str, float]:
    """Instructions per call of the echo, oubli get and put, and their ratios to the echo."""
    with tempfile.TemporaryDirectory(prefix="oubli-instructions-") as tmp:
        work = Path(tmp)
        echo = echo_instructions(work, calls, warmup)
        get, put = oubli_instructions(work, calls, warmup)
    return {
        "echo": echo,
        "get": get,
        "put": put,
        "get_x_echo": get / echo,
        "put_x_echo": put / echo,
    }


def table(result: dict[str, float]) -> str:
    rows = [
        ("gRPC echo (1 KiB)", result["echo"], 1.0),
        ("oubli unary get, SQLite, local keystore", result["get"], result["get_x_echo"]),
        ("oubli unary put, SQLite, local keystore", result["put"], result["put_x_echo"]),
    ]
    lines = ["| server | instructions per call | x echo |", "|---|---:|---:|"]
    lines += [
        f"| {name} | {f'{count:,.0f}'.replace(',', ' ')} | {ratio:.2f} |"
        for name, count, ratio in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS, help="calls counted per server")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="calls before counting")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    result = measure(args.calls, args.warmup)
    print(table(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
