"""Run `milvus-server` (the pip package `milvus`, Milvus 2.3.5 standalone) with one fix: its port
probe sets SO_REUSEADDR as Milvus itself does. Without it a port whose last connections are in
TIME_WAIT (every port, just after a restart) looks taken, and the wrapper silently moves the
proxy and the health port to the next free ones.

A plain script (stdlib + `milvus`): visrec.local.milvus_server runs it on this machine, and the
Milvus stand-in image (docker/standins/milvus.Dockerfile) is built around it.
"""

import socket
import sys

import milvus


def try_bind_port(self: object, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


if __name__ == "__main__":
    milvus.MilvusServerConfig.try_bind_port = try_bind_port
    sys.argv[0] = "milvus-server"
    sys.exit(milvus.main())
