"""What quring's aioquic test clients share: logging, the UDP receive buffer, closing the
connection, and running a client under its --timeout with a watchdog that always prints the
report.

Each client (aioquic_echo.py, aioquic_perf.py) defines its protocol, its Report (with an
``emit()`` that prints one JSON object) and ``run(args, report, holder)``; ``holder`` gets
the connection's protocol so that it can be closed however the run ends.
"""

import asyncio
import os
import socket
import sys
import threading
from typing import Callable, List, Optional

# How long closing waits for the CONNECTION_CLOSE to leave and the socket to close.
CLOSE_LINGER_SECS = 1.0
# Extra time the watchdog allows past --timeout (it fires only if the loop is wedged).
WATCHDOG_SLACK_SECS = 3.0
# The receive buffer asked for: Python drains the socket much more slowly than the server
# fills it, and the default buffer would overflow in bursts.
RECV_BUFFER_BYTES = 8 << 20


def make_log(name: str) -> Callable[[str], None]:
    """A function writing ``name: msg`` lines to stderr, flushed."""

    def log(msg: str) -> None:
        sys.stderr.write("%s: %s\n" % (name, msg))
        sys.stderr.flush()

    return log


def grow_receive_buffer(sock: socket.socket, log: Callable[[str], None]) -> None:
    """Best effort: a large receive buffer (SO_RCVBUFFORCE needs CAP_NET_ADMIN; otherwise
    SO_RCVBUF, which the kernel caps at rmem_max)."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, RECV_BUFFER_BYTES)
            return
        except OSError:
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
    except OSError as exc:
        log("cannot enlarge the UDP receive buffer: %s" % exc)


async def shutdown(proto) -> None:
    """Send CONNECTION_CLOSE (if still open) and release the socket, bounded."""
    if proto is None:
        return
    if not proto.is_terminated():
        proto.close_quietly()
    transport = proto._transport
    if transport is not None:
        transport.close()  # flushes what is buffered, then connection_lost
        try:
            await asyncio.wait_for(asyncio.shield(proto.lost), CLOSE_LINGER_SECS)
        except asyncio.TimeoutError:
            pass


def run_client(
    args,
    report,
    run,
    log: Callable[[str], None],
    timed_out: Optional[Callable[[], str]] = None,
) -> int:
    """Runs ``run(args, report, holder)`` within ``args.timeout``, closes the connection,
    prints the report, and returns the exit status (1 on timeout, connection failure or
    an unexpected error). ``timed_out`` says what a timeout means for this client."""

    async def amain() -> int:
        holder: List = []
        try:
            code = await asyncio.wait_for(run(args, report, holder), args.timeout)
        except asyncio.TimeoutError:
            what = timed_out() if timed_out is not None else ""
            log("timed out after %.1fs%s" % (args.timeout, what))
            code = 1
        except (OSError, ConnectionError) as exc:
            log("cannot connect: %s" % exc)
            code = 1
        await shutdown(holder[0] if holder else None)
        return code

    # Last-resort guard: if the event loop is ever wedged, still honour the deadline, print
    # what we have and exit 1.
    def watchdog() -> None:
        log("watchdog: run exceeded --timeout, forcing exit")
        report.emit()
        os._exit(1)

    timer = threading.Timer(args.timeout + WATCHDOG_SLACK_SECS, watchdog)
    timer.daemon = True
    timer.start()
    try:
        code = asyncio.run(amain())
    except Exception as exc:
        log("unexpected error: %r" % exc)
        code = 1
    timer.cancel()
    report.emit()
    return code


def check_cafile(parser, path: str) -> None:
    """Ends argument parsing with an error unless ``path`` is a readable PEM certificate."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as exc:
        parser.error("cannot read --cafile: %s" % exc)
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        parser.error("--cafile %s holds no PEM certificate" % path)


async def resolve(host: str, port: int):
    """The first UDP address of ``host``: ``(family, proto, sockaddr)``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise ConnectionError("cannot resolve %s" % host)
    family, _, proto, _, addr = infos[0]
    return family, proto, addr


async def open_endpoint(family, proto, addr, make_protocol, log: Callable[[str], None]):
    """A connected, non-blocking UDP socket of the address's own family (no dependence on
    dual-stack sockets, and ICMP errors reach ``error_received()``) with a large receive
    buffer, wrapped in the protocol ``make_protocol()`` builds; returns the protocol."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        grow_receive_buffer(sock, log)
        sock.setblocking(False)
        sock.connect(addr)
        _, protocol = await loop.create_datagram_endpoint(make_protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return protocol
