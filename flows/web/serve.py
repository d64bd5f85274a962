"""Run the explorer app: open the database read-only, bind the port, serve until interrupted."""

from __future__ import annotations

import errno
import socket

from storage.engine import make_engine
from tasks.errors import RecsError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); RecsError with the fix when
    the port is taken, not allowed or the host is no address of this machine. Binding here, before
    uvicorn, is what makes a taken port one line instead of uvicorn's log and exit."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise RecsError(f"cannot resolve --host {host!r}: {exc.strerror}; give an address such as 127.0.0.1") from None
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they
    # are TCP, and without it every keep-alive response waited out the client's 40 ms delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RecsError(
                f"port {port} on {host} is already in use; stop what uses it or choose another --port"
            ) from None
        raise RecsError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --host or --port") from None
    return sock


def serve(db: str, host: str, port: int, on_ready=None) -> None:
    """Serve ``flows.web.app`` over database ``db`` on ``host:port`` until SIGINT/SIGTERM.

    The database must exist and be at this code's schema (RecsError otherwise, before the port is
    bound). ``on_ready(host, port)`` is called once the socket listens (port 0 resolved).
    """
    import uvicorn

    from flows.web.app import create_app

    engine = make_engine(db, read_only=True)
    sock = bind(host, port)
    if on_ready is not None:
        on_ready(*sock.getsockname()[:2])
    config = uvicorn.Config(create_app(engine), log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        engine.dispose()
