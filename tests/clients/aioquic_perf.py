#!/usr/bin/env python3
"""QUIC perf / discard client built on aioquic, used by quring's integration tests.

It is written against the protocols, not against quring's code: a second,
independent QUIC implementation drives the server's `perf` and `discard` apps.

perf (ALPN "perf"): every stream the client opens is one request: an 8-byte
big-endian reply size N, then upload bytes, then FIN. The server answers with
N bytes and FIN: on the same stream for a bidirectional request, on a new
server-opened unidirectional stream for a unidirectional one. Byte i of
every reply is i % 251.

discard (ALPN "discard"): the server reads and drops everything; it
finishes its side of a bidirectional stream, with no data, once the client
has finished its own.

Usage:
    aioquic_perf.py --host 127.0.0.1 --port PORT --cafile CERT.pem
        [--server-name localhost] [--app perf|discard]
        [--request DIR:REPLY:UPLOAD[:COUNT]]... [--split-header K]
        [--datagrams N] [--datagram-size BYTES] [--timeout SECS]

--request (repeatable) adds COUNT (default 1) requests on DIR streams ("bi"
or "uni") asking for REPLY bytes (perf; must be 0 with discard) and
uploading UPLOAD bytes after the header. All requests run concurrently.
With --split-header K (perf, 1..7) the first K header bytes of every request
go out first; the rest follows only once a PING sent after them has been
acknowledged, so the server sees the header arrive in two pieces.

--datagrams N sends N DATAGRAM frames before the requests start; neither
app answers them, so any datagram received counts against the run.

After the requests the client sends a PING and waits for its
acknowledgement ("ping_ok"), to show the connection is still healthy.

Exactly one JSON object is printed on stdout when the run ends:

    {"connected": bool, "alpn": str|null,
     "requests": int, "requests_ok": int, "requests_failed": int,
     "uni_replies_ok": int, "uni_replies_failed": int,
     "uni_reply_sizes_match": bool|null,
     "bytes_uploaded": int, "bytes_received": int,
     "datagrams_sent": int, "datagrams_received": int,
     "ping_ok": bool, "failures": [str],
     "close_error_code": int|null, "close_reason": str|null}

A bidirectional request is ok when its reply is exactly REPLY bytes of the
pattern (none with discard) followed by FIN, with no reset or STOP_SENDING.
A unidirectional request is ok when the server acknowledged all of its
upload and FIN. With perf, every server-opened unidirectional stream is
checked the same way ("uni_replies_ok"), and "uni_reply_sizes_match" says
whether the reply lengths are exactly the requested ones (replies do not
say which request they answer, so lengths are compared as multisets);
null when no unidirectional request was made. "failures" holds the first
reasons for failed requests or replies.

Exit status: 0 when the client connected and the run finished (failed
requests are reported in the JSON, not through the exit status), 1 when it
could not connect or the --timeout deadline passed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections import Counter
from typing import Dict, List, Optional

from harness import check_cafile, make_log, open_endpoint, resolve, run_client

try:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "aioquic_perf: cannot import aioquic (%s); install "
        "tests/clients/requirements.txt (scripts/test.sh does this)\n" % exc
    )
    sys.exit(2)

HEADER_LEN = 8
PERIOD = 251
# Reference copy of the reply pattern; replies are compared slice by slice.
BLOCK = bytes(i % PERIOD for i in range(PERIOD * 64))
# Largest DATAGRAM payload that fits one aioquic packet (see aioquic_echo.py).
MAX_DATAGRAM_SIZE = 1150
# DATAGRAM frames handed to aioquic but not yet sent.
DATAGRAM_WINDOW = 32
# How long the final PING may take.
PING_SECS = 5.0
# Failure reasons kept in the report.
MAX_FAILURES = 20


log = make_log("aioquic_perf")


def is_pattern(offset: int, data: bytes) -> bool:
    """Whether `data` is what every reply holds at `offset`."""
    view = memoryview(data)
    start = offset % PERIOD
    pos = 0
    while pos < len(view):
        n = min(len(view) - pos, len(BLOCK) - start)
        if view[pos : pos + n] != BLOCK[start : start + n]:
            return False
        pos += n
        start = (start + n) % PERIOD
    return True


class Report:
    """Everything that ends up in the JSON object."""

    def __init__(self) -> None:
        self.connected = False
        self.alpn: Optional[str] = None
        self.requests = 0
        self.requests_ok = 0
        self.requests_failed = 0
        self.uni_replies_ok = 0
        self.uni_replies_failed = 0
        self.uni_reply_sizes_match: Optional[bool] = None
        self.bytes_uploaded = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.ping_ok = False
        self.failures: List[str] = []
        self.close_error_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self._lock = threading.Lock()
        self._printed = False

    def fail(self, why: str) -> None:
        log(why)
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(why)

    def emit(self) -> None:
        with self._lock:
            if self._printed:
                return
            self._printed = True
            obj = {
                k: v for k, v in vars(self).items() if not k.startswith("_")
            }
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()


class Reply:
    """Checks one reply stream as data arrives: pattern, length, FIN."""

    def __init__(self, name: str, expected: Optional[int], report: Report) -> None:
        self.name = name
        self.expected = expected  # None: any length (unidirectional replies)
        self.received = 0
        self.report = report
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def finish(self, ok: bool, why: str = "") -> None:
        if self.done.done():
            return
        if not ok:
            self.report.fail("%s: %s" % (self.name, why))
        self.done.set_result(ok)

    def feed(self, data: bytes, fin: bool) -> None:
        if self.done.done():
            return
        end = self.received + len(data)
        if self.expected is not None and end > self.expected:
            self.finish(False, "reply longer than asked (%d > %d bytes)" % (end, self.expected))
            return
        if not is_pattern(self.received, data):
            self.finish(False, "reply differs from the pattern within bytes %d..%d" % (self.received, end))
            return
        self.received = end
        self.report.bytes_received += len(data)
        if fin:
            if self.expected is None or self.received == self.expected:
                self.finish(True)
            else:
                self.finish(False, "FIN after %d of %d bytes" % (self.received, self.expected))


class Request:
    def __init__(self, index: int, bidi: bool, reply: int, upload: int) -> None:
        self.index = index
        self.bidi = bidi
        self.reply = reply
        self.upload = upload
        self.stream_id = -1

    @property
    def name(self) -> str:
        return "%s request %d (stream %d, reply %d, upload %d)" % (
            "bi" if self.bidi else "uni",
            self.index,
            self.stream_id,
            self.reply,
            self.upload,
        )


class PerfClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        loop = asyncio.get_running_loop()
        self.report: Report = Report()
        self.handshake_done: asyncio.Future = loop.create_future()
        self.handshake_done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.terminated: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.closing_locally = False
        # Replies we wait for, by stream id: bidirectional requests' own streams and the
        # server's unidirectional streams.
        self.replies: Dict[int, Reply] = {}
        self.uni_replies: List[Reply] = []
        self.uni_expected = 0
        self.uni_all_arrived: asyncio.Future = loop.create_future()
        self._transmitted = asyncio.Event()

    # -- asyncio.DatagramProtocol ------------------------------------------

    def error_received(self, exc: Exception) -> None:
        if not self.handshake_done.done():
            self.handshake_done.set_exception(ConnectionError("UDP error before handshake: %s" % exc))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    # -- aioquic -------------------------------------------------------------

    def transmit(self) -> None:
        super().transmit()
        self._transmitted.set()

    async def wait_transmitted(self) -> None:
        """Returns after the next transmit (which follows every datagram received)."""
        self._transmitted.clear()
        await self._transmitted.wait()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if not self.handshake_done.done():
                self.handshake_done.set_result(event.alpn_protocol)
        elif isinstance(event, events.StreamDataReceived):
            reply = self.replies.get(event.stream_id)
            if reply is None and self._is_server_uni(event.stream_id):
                reply = Reply("uni reply (stream %d)" % event.stream_id, None, self.report)
                reply.done.add_done_callback(lambda _: self._uni_reply_done())
                self.replies[event.stream_id] = reply
                self.uni_replies.append(reply)
            if reply is not None:
                reply.feed(event.data, event.end_stream)
            elif event.data:
                log("data on unexpected stream %d ignored" % event.stream_id)
        elif isinstance(event, events.StreamReset):
            reply = self.replies.get(event.stream_id)
            if reply is not None:
                reply.finish(False, "reset by the server (code %d)" % event.error_code)
        elif isinstance(event, events.StopSendingReceived):
            reply = self.replies.get(event.stream_id)
            if reply is not None:
                reply.finish(False, "STOP_SENDING from the server (code %d)" % event.error_code)
        elif isinstance(event, events.DatagramFrameReceived):
            self.report.datagrams_received += 1
        elif isinstance(event, events.ConnectionTerminated):
            self._on_terminated(event)

    @staticmethod
    def _is_server_uni(stream_id: int) -> bool:
        return stream_id % 4 == 3

    def _uni_reply_done(self) -> None:
        done = sum(1 for r in self.uni_replies if r.done.done())
        if done >= self.uni_expected and not self.uni_all_arrived.done():
            self.uni_all_arrived.set_result(None)

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if not self.closing_locally:
            log(
                "connection closed: error_code=%d frame_type=%s reason=%r"
                % (event.error_code, event.frame_type, event.reason_phrase)
            )
            self.report.close_error_code = int(event.error_code)
            self.report.close_reason = event.reason_phrase
        if not self.handshake_done.done():
            self.handshake_done.set_exception(
                ConnectionError("connection closed during handshake: error_code=%d" % event.error_code)
            )
        for reply in self.replies.values():
            reply.finish(False, "connection closed before the reply completed")
        if not self.uni_all_arrived.done():
            self.uni_all_arrived.set_result(None)
        if not self.terminated.done():
            self.terminated.set_result(None)
        self._transmitted.set()

    # -- helpers used by the run ---------------------------------------------

    def is_terminated(self) -> bool:
        return self.terminated.done()

    def upload_acked(self, stream_id: int) -> bool:
        """Whether the server acknowledged all of our data and FIN on `stream_id`.

        Uses aioquic's (private) stream table: a stream it has discarded is one
        whose both halves are complete.
        """
        streams = getattr(self._quic, "_streams", None)
        if streams is None:
            return False
        stream = streams.get(stream_id)
        if stream is None:
            return True
        sender = getattr(stream, "sender", None)
        return bool(sender is not None and sender.is_finished)

    def datagrams_queued(self) -> int:
        pending = getattr(self._quic, "_datagrams_pending", None)
        return len(pending) if pending is not None else 0

    def close_quietly(self) -> None:
        self.closing_locally = True
        try:
            self.close()
        except Exception as exc:  # pragma: no cover - defensive
            log("close failed: %r" % exc)


def parse_request(p: argparse.ArgumentParser, spec: str):
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] not in ("bi", "uni"):
        p.error("--request %r: expected DIR:REPLY:UPLOAD[:COUNT] with DIR bi or uni" % spec)
    try:
        reply, upload = int(parts[1]), int(parts[2])
        count = int(parts[3]) if len(parts) == 4 else 1
    except ValueError:
        p.error("--request %r: REPLY, UPLOAD and COUNT must be integers" % spec)
    if not (0 <= reply < 1 << 64 and upload >= 0 and count >= 1):
        p.error("--request %r: REPLY and UPLOAD must be >= 0, COUNT >= 1" % spec)
    return parts[0] == "bi", reply, upload, count


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aioquic_perf.py",
        description="QUIC perf / discard client (aioquic) for quring's integration tests.",
    )
    p.add_argument("--host", required=True, help="server address or name")
    p.add_argument("--port", required=True, type=int, help="server UDP port")
    p.add_argument("--cafile", required=True, help="PEM file with the certificate(s) to trust")
    p.add_argument("--server-name", default="localhost", help="name to verify / send as SNI (default: localhost)")
    p.add_argument("--app", choices=("perf", "discard"), default="perf", help="protocol and ALPN (default: perf)")
    p.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="DIR:REPLY:UPLOAD[:COUNT]",
        help="COUNT requests on DIR (bi|uni) streams asking for REPLY bytes, uploading UPLOAD bytes",
    )
    p.add_argument("--split-header", type=int, default=0, metavar="K", help="send the header as K bytes, then the rest")
    p.add_argument("--datagrams", type=int, default=0, help="datagrams to send before the requests")
    p.add_argument("--datagram-size", type=int, default=64, help="bytes per datagram, 1..%d" % MAX_DATAGRAM_SIZE)
    p.add_argument("--timeout", type=float, default=20.0, help="deadline for the whole run in seconds (default: 20)")
    args = p.parse_args(argv)

    if not 0 < args.port < 65536:
        p.error("--port must be within 1..65535")
    args.requests = []
    for spec in args.request:
        bidi, reply, upload, count = parse_request(p, spec)
        if args.app == "discard" and reply != 0:
            p.error("--request %r: discard sends no reply; REPLY must be 0" % spec)
        args.requests.extend([(bidi, reply, upload)] * count)
    if args.split_header and not (0 < args.split_header < HEADER_LEN and args.app == "perf"):
        p.error("--split-header must be within 1..%d, with --app perf" % (HEADER_LEN - 1))
    if args.datagrams < 0:
        p.error("--datagrams must be >= 0")
    if args.datagrams and not 0 < args.datagram_size <= MAX_DATAGRAM_SIZE:
        p.error("--datagram-size must be within 1..%d" % MAX_DATAGRAM_SIZE)
    if not args.timeout > 0:
        p.error("--timeout must be > 0")
    check_cafile(p, args.cafile)
    return args


async def open_connection(args: argparse.Namespace, report: Report) -> PerfClientProtocol:
    family, proto, addr = await resolve(args.host, args.port)
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[args.app],
        server_name=args.server_name,
        max_datagram_frame_size=65536,
        idle_timeout=max(60.0, args.timeout + 10.0),
    )
    config.load_verify_locations(cafile=args.cafile)
    quic = QuicConnection(configuration=config)
    protocol = await open_endpoint(family, proto, addr, lambda: PerfClientProtocol(quic), log)
    protocol.report = report
    protocol.connect(addr)
    return protocol


async def send_datagrams(proto: PerfClientProtocol, args: argparse.Namespace) -> None:
    remote_max = getattr(proto._quic, "_remote_max_datagram_frame_size", -1)
    if remote_max is None or (remote_max != -1 and remote_max < args.datagram_size):
        proto.report.fail("server takes no DATAGRAM frames of %d bytes (max %r)" % (args.datagram_size, remote_max))
        return
    payload = bytes((i * 7) & 0xFF for i in range(args.datagram_size))
    for _ in range(args.datagrams):
        while proto.datagrams_queued() >= DATAGRAM_WINDOW and not proto.is_terminated():
            await proto.wait_transmitted()
        if proto.is_terminated():
            return
        proto._quic.send_datagram_frame(payload)
        proto.report.datagrams_sent += 1
        proto.transmit()
    while proto.datagrams_queued() > 0 and not proto.is_terminated():
        await proto.wait_transmitted()


async def run_requests(proto: PerfClientProtocol, args: argparse.Namespace) -> None:
    report = proto.report
    quic = proto._quic
    perf = args.app == "perf"
    requests = [Request(i, bidi, reply, upload) for i, (bidi, reply, upload) in enumerate(args.requests)]
    report.requests = len(requests)
    proto.uni_expected = sum(1 for r in requests if not r.bidi) if perf else 0
    if proto.uni_expected == 0 and not proto.uni_all_arrived.done():
        proto.uni_all_arrived.set_result(None)

    longest = max((r.upload for r in requests), default=0)
    upload_fill = (bytes(range(256)) * (longest // 256 + 1))[:longest]
    rests = []
    for r in requests:
        # The stream exists once data is queued on it; only then is the next id free.
        r.stream_id = quic.get_next_available_stream_id(is_unidirectional=not r.bidi)
        header = r.reply.to_bytes(HEADER_LEN, "big") if perf else b""
        if r.bidi:
            proto.replies[r.stream_id] = Reply(r.name, r.reply if perf else 0, report)
        body = header + upload_fill[: r.upload]
        report.bytes_uploaded += r.upload
        if args.split_header:
            quic.send_stream_data(r.stream_id, body[: args.split_header], end_stream=False)
            rests.append(body[args.split_header :])
        else:
            quic.send_stream_data(r.stream_id, body, end_stream=True)
    proto.transmit()
    if args.split_header:
        # The PING leaves after the first pieces: once it is acknowledged the server has (on
        # a lossless path) taken them in on their own.
        await proto.ping()
        for r, rest in zip(requests, rests):
            quic.send_stream_data(r.stream_id, rest, end_stream=True)
        proto.transmit()

    results: List[bool] = []
    try:
        for r in requests:
            if r.bidi:
                results.append(await asyncio.shield(proto.replies[r.stream_id].done))
                continue
            while not proto.upload_acked(r.stream_id) and not proto.is_terminated():
                await proto.wait_transmitted()
            ok = proto.upload_acked(r.stream_id) and not proto.is_terminated()
            if not ok:
                report.fail("%s: upload not acknowledged" % r.name)
            results.append(ok)
        if perf and proto.uni_expected:
            await asyncio.shield(proto.uni_all_arrived)
    finally:
        report.requests_ok = sum(1 for ok in results if ok)
        report.requests_failed = len(requests) - report.requests_ok
        replies = proto.uni_replies
        report.uni_replies_ok = sum(1 for r in replies if r.done.done() and r.done.result())
        report.uni_replies_failed = len(replies) - report.uni_replies_ok
        if perf and proto.uni_expected:
            asked = Counter(r.reply for r in requests if not r.bidi)
            got = Counter(r.received for r in replies if r.done.done() and r.done.result())
            report.uni_reply_sizes_match = asked == got
            if asked != got:
                report.fail("uni reply sizes differ: asked %s, got %s" % (dict(asked), dict(got)))


async def run(args: argparse.Namespace, report: Report, holder: list) -> int:
    proto = await open_connection(args, report)
    holder.append(proto)
    try:
        alpn = await asyncio.shield(proto.handshake_done)
    except ConnectionError as exc:
        log("handshake failed: %s" % exc)
        return 1
    report.connected = True
    report.alpn = alpn
    log("connected (alpn %s)" % alpn)
    if args.datagrams:
        await send_datagrams(proto, args)
    if args.requests:
        await run_requests(proto, args)
    if not proto.is_terminated():
        try:
            await asyncio.wait_for(proto.ping(), PING_SECS)
            report.ping_ok = True
        except (asyncio.TimeoutError, ConnectionError) as exc:
            report.fail("final PING not acknowledged: %r" % exc)
    return 0


def main(argv: List[str]) -> int:
    return run_client(parse_args(argv), Report(), run, log)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
