"""
The echo server for the round-trip floor: a thread per connection, blocking
``recv``/``sendall``, TCP_NODELAY.  Usage: ``python -m bench.echo PORT``.
"""

import socket
import sys
import threading


def _serve(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv, send = conn.recv, conn.sendall
    try:
        while True:
            data = recv(65536)
            if not data:
                break
            send(data)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
