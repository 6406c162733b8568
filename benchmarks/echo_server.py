"""The ceiling: a bare gRPC echo service with the same server settings as oubli's.

Run: python -m benchmarks.echo_server PORT_FILE [--workers N] — serves /bench.Echo/Echo
on a free loopback port (written to PORT_FILE), returning each request's bytes
unchanged, with the thread pool and message limits of vault.app.server; and
/bench.Echo/Pid, answering the serving process's id (which worker a connection
reached). With ``--workers N``, N processes serve the one port (SO_REUSEPORT), started
as ``oubli serve --workers N`` starts its own (multiprocessing spawn; worker 0 picks
the port, the others join it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import threading
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from vault.app.config import ServerConfig


def _serve(port: int, reuse_port: bool) -> tuple[grpc.Server, int]:
    config = ServerConfig()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    pid = grpc.unary_unary_rpc_method_handler(lambda request, context: str(os.getpid()).encode())
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": echo, "Pid": pid}),)
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def _until_sigterm() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def _worker(port: int, pipe: Connection) -> None:
    server, bound = _serve(port, reuse_port=True)
    pipe.send(bound)
    _until_sigterm()
    server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers == 1:
        server, port = _serve(0, reuse_port=False)
        args.port_file.write_text(str(port))
        _until_sigterm()
        server.stop(0)
        return
    context = multiprocessing.get_context("spawn")
    processes = []
    port = 0
    for _ in range(args.workers):
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(port, theirs))
        process.start()
        port = ours.recv()
        processes.append(process)
    args.port_file.write_text(str(port))
    _until_sigterm()
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


if __name__ == "__main__":
    main()
