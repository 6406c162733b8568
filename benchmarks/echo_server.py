"""The ceiling: a bare gRPC echo service with the same server settings as oubli's.

Run: python -m benchmarks.echo_server PORT_FILE — serves /bench.Echo/Echo on a free
loopback port (written to PORT_FILE), returning each request's bytes unchanged, with
the thread pool and message limits of vault.app.server.
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from vault.app.config import ServerConfig


def main() -> None:
    config = ServerConfig()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
    )
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": echo}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(sys.argv[1]).write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


if __name__ == "__main__":
    main()
