#!/usr/bin/env python3
"""QUIC echo client built on aioquic, used by quring's integration tests.

It is a second, independent QUIC implementation (the Rust tests also use
quinn) that exercises the server's stream and datagram echo paths.

Usage:
    aioquic_echo.py --host 127.0.0.1 --port PORT --cafile CERT.pem
        [--server-name localhost] [--alpn echo]
        [--streams N] [--stream-size BYTES]
        [--datagrams N] [--datagram-size BYTES]
        [--timeout SECS] [--wait-close]
        [--session-ticket-out PATH] [--session-ticket-in PATH] [--early-data]

Exactly one JSON object is printed on stdout when the run ends:

    {"connected": bool, "alpn": str|null,
     "streams_ok": int, "streams_failed": int,
     "datagrams_sent": int, "datagrams_echoed": int,
     "close_error_code": int|null, "close_reason": str|null}

Diagnostics go to stderr. Once the handshake has completed the client writes
the line "aioquic_echo: connected (alpn <ALPN>)" to stderr (flushed), which
a test can wait for before, e.g., shutting the server down.

Exit status: 0 when the client connected and the run finished (lost
datagrams, failed streams or a server-side close are reported in the JSON,
not through the exit status), 1 when it could not connect / complete the
handshake or the --timeout deadline passed, 2 on bad arguments.

With --wait-close the client only completes the handshake and then waits
(up to --timeout) for the server to close the connection; it exits 0 once
the server's close arrives and 1 if it never does.

Session resumption: --session-ticket-out PATH waits (within --timeout) for
the server's first session ticket and saves it to PATH (pickled aioquic
SessionTicket); --session-ticket-in PATH offers a saved ticket. With
--early-data the streams are opened and written right after the first
flight, before the handshake completes, so that they travel as 0-RTT data
when the ticket allows it (data the server rejects is sent again in 1-RTT).
With any of these three options the JSON object has two more members:
"session_resumed" and "early_data_accepted" (bool, null before the
handshake completed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import threading
from typing import Dict, List, Optional, Set

from harness import check_cafile, make_log, open_endpoint, resolve, run_client

try:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "aioquic_echo: cannot import aioquic (%s); install "
        "tests/clients/requirements.txt (scripts/test.sh does this)\n" % exc
    )
    sys.exit(2)

# Largest DATAGRAM payload accepted on the command line.  aioquic never
# sends UDP payloads above QuicConfiguration.max_datagram_size (1200 bytes by
# default) and a DATAGRAM frame that does not fit into one packet would sit in
# its queue forever, so stay below 1200 minus the worst-case short-header,
# AEAD and frame overhead (1 + 20 + 4 + 16 + 1 + 2 bytes).
MAX_DATAGRAM_SIZE = 1150
# Bytes at the start of every datagram holding its sequence number.
SEQ_BYTES = 4
# Datagrams handed to aioquic but not yet written into packets.  Keeping this
# small means "sent" really means "on the wire" when the grace period starts.
DATAGRAM_WINDOW = 32
# How long to keep waiting for echoes after the last datagram went out.
DATAGRAM_GRACE_SECS = 2.0

# Period of the stream pattern.  A prime that is not a divisor of common
# chunk sizes, so data delivered at a wrong offset does not match.
_PATTERN_PERIOD = 4093


def _pattern_block(seed: int, length: int) -> bytes:
    """Return `length` bytes of a deterministic pattern that depends on `seed`."""
    block = bytes(((k * 131) + (seed * 29) + (k >> 7) + 7) & 0xFF for k in range(_PATTERN_PERIOD))
    reps = length // _PATTERN_PERIOD + 1
    return (block * reps)[:length]


def stream_payload(index: int, size: int) -> bytes:
    """Data sent on the index-th stream (index starts at 0)."""
    return _pattern_block(index + 1, size)


class DatagramPattern:
    """Builds and checks datagram payloads: a big-endian sequence number
    followed by filler that depends on the sequence number."""

    def __init__(self, size: int) -> None:
        self.size = size
        filler_len = max(size - SEQ_BYTES, 0)
        # 256 extra bytes so every seq can take its own 256-byte-rotated slice.
        self._filler = _pattern_block(0xD6, filler_len + 256)
        self._filler_len = filler_len

    def payload(self, seq: int) -> bytes:
        start = seq & 0xFF
        return seq.to_bytes(SEQ_BYTES, "big") + self._filler[start : start + self._filler_len]

    def seq_of(self, data: bytes) -> Optional[int]:
        if len(data) != self.size:
            return None
        seq = int.from_bytes(data[:SEQ_BYTES], "big")
        if data != self.payload(seq):
            return None
        return seq


class Report:
    """Everything that ends up in the JSON object."""

    def __init__(self) -> None:
        self.connected = False
        self.alpn: Optional[str] = None
        self.streams_ok = 0
        self.streams_failed = 0
        self.datagrams_sent = 0
        self.datagrams_echoed = 0
        self.close_error_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        # Reported only when resumption options were given (None: member left out).
        self.resumption: Optional[dict] = None
        self._lock = threading.Lock()
        self._printed = False

    def emit(self) -> bool:
        """Print the JSON object once; returns False if it was already printed."""
        with self._lock:
            if self._printed:
                return False
            self._printed = True
            obj = {
                "connected": self.connected,
                "alpn": self.alpn,
                "streams_ok": self.streams_ok,
                "streams_failed": self.streams_failed,
                "datagrams_sent": self.datagrams_sent,
                "datagrams_echoed": self.datagrams_echoed,
                "close_error_code": self.close_error_code,
                "close_reason": self.close_reason,
            }
            if self.resumption is not None:
                obj.update(self.resumption)
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()
            return True


log = make_log("aioquic_echo")


class StreamCheck:
    """Verifies the echo on one bidirectional stream as data arrives."""

    def __init__(self, index: int, stream_id: int, expected: bytes, fut: asyncio.Future) -> None:
        self.index = index
        self.stream_id = stream_id
        self.expected = expected
        self.received = 0
        self.fut = fut

    def finish(self, ok: bool, why: str = "") -> None:
        if self.fut.done():
            return
        if not ok:
            log("stream %d (id %d) failed: %s" % (self.index, self.stream_id, why))
        self.fut.set_result(ok)

    def feed(self, data: bytes, fin: bool) -> None:
        if self.fut.done():
            return
        end = self.received + len(data)
        if end > len(self.expected):
            self.finish(False, "echo longer than sent (%d > %d bytes)" % (end, len(self.expected)))
            return
        if data != self.expected[self.received : end]:
            self.finish(False, "echo differs within bytes %d..%d" % (self.received, end))
            return
        self.received = end
        if fin:
            if self.received == len(self.expected):
                self.finish(True)
            else:
                self.finish(
                    False,
                    "FIN after %d of %d bytes" % (self.received, len(self.expected)),
                )


class EchoClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        loop = asyncio.get_running_loop()
        self.report: Optional[Report] = None
        self.handshake_done: asyncio.Future = loop.create_future()
        # Mark a failed handshake's exception as retrieved even if the run was
        # cancelled first, so asyncio does not log it at exit.
        self.handshake_done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.terminated: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.closing_locally = False
        self.streams: Dict[int, StreamCheck] = {}
        self.dgram_pattern: Optional[DatagramPattern] = None
        self.dgram_seen: Set[int] = set()
        self.dgram_expected = 0
        self.dgram_all_back: asyncio.Future = loop.create_future()
        # Set after every transmit(), cleared by wait_transmitted(); paces datagrams.
        self._transmitted = asyncio.Event()
        # Resolves to the first session ticket received (set by open_connection()).
        self.ticket_received: Optional[asyncio.Future] = None

    # -- asyncio.DatagramProtocol ------------------------------------------

    def error_received(self, exc: Exception) -> None:
        # The UDP socket is connected, so ICMP errors (e.g. port unreachable)
        # show up here.  Before the handshake completes that means there is
        # no server; afterwards QUIC's own loss recovery handles it.
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
        self._transmitted.clear()
        await self._transmitted.wait()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if self.report is not None and self.report.resumption is not None:
                self.report.resumption["session_resumed"] = bool(event.session_resumed)
                self.report.resumption["early_data_accepted"] = bool(event.early_data_accepted)
            if not self.handshake_done.done():
                self.handshake_done.set_result(event.alpn_protocol)
        elif isinstance(event, events.StreamDataReceived):
            check = self.streams.get(event.stream_id)
            if check is not None:
                check.feed(event.data, event.end_stream)
            elif event.data or event.end_stream:
                log("data on unexpected stream %d ignored" % event.stream_id)
        elif isinstance(event, events.StreamReset):
            check = self.streams.get(event.stream_id)
            if check is not None:
                check.finish(False, "reset by peer (code %d)" % event.error_code)
        elif isinstance(event, events.StopSendingReceived):
            check = self.streams.get(event.stream_id)
            if check is not None:
                check.finish(False, "STOP_SENDING from peer (code %d)" % event.error_code)
        elif isinstance(event, events.DatagramFrameReceived):
            self._on_datagram(event.data)
        elif isinstance(event, events.ConnectionTerminated):
            self._on_terminated(event)

    def _on_datagram(self, data: bytes) -> None:
        if self.dgram_pattern is None:
            log("unexpected datagram (%d bytes) ignored" % len(data))
            return
        seq = self.dgram_pattern.seq_of(data)
        if seq is None or seq >= self.dgram_expected:
            log("datagram echo of %d bytes does not match anything sent" % len(data))
            return
        if seq not in self.dgram_seen:
            self.dgram_seen.add(seq)
            if self.report is not None:
                self.report.datagrams_echoed = len(self.dgram_seen)
            if len(self.dgram_seen) >= self.dgram_expected and not self.dgram_all_back.done():
                self.dgram_all_back.set_result(None)

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if not self.closing_locally:
            reason = event.reason_phrase
            log(
                "connection closed: error_code=%d frame_type=%s reason=%r"
                % (event.error_code, event.frame_type, reason)
            )
            if self.report is not None:
                self.report.close_error_code = int(event.error_code)
                self.report.close_reason = reason
        if not self.handshake_done.done():
            self.handshake_done.set_exception(
                ConnectionError(
                    "connection closed during handshake: error_code=%d reason=%r"
                    % (event.error_code, event.reason_phrase)
                )
            )
        for check in self.streams.values():
            check.finish(False, "connection closed before the echo completed")
        if not self.dgram_all_back.done():
            self.dgram_all_back.set_result(None)
        if not self.terminated.done():
            self.terminated.set_result(None)
        self._transmitted.set()

    # -- helpers used by the run ---------------------------------------------

    def is_terminated(self) -> bool:
        return self.terminated.done()

    def datagrams_queued(self) -> int:
        # aioquic keeps DATAGRAM frames that did not fit into the congestion
        # window in this (private) queue; fall back to "nothing queued" if a
        # future version renames it.
        pending = getattr(self._quic, "_datagrams_pending", None)
        return len(pending) if pending is not None else 0

    def remote_max_datagram_frame_size(self) -> Optional[int]:
        return getattr(self._quic, "_remote_max_datagram_frame_size", -1)

    def close_quietly(self) -> None:
        self.closing_locally = True
        try:
            self.close()  # NO_ERROR, empty reason
        except Exception as exc:  # pragma: no cover - defensive
            log("close failed: %r" % exc)


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aioquic_echo.py",
        description="QUIC echo client (aioquic) for quring's integration tests.",
    )
    p.add_argument("--host", required=True, help="server address or name")
    p.add_argument("--port", required=True, type=int, help="server UDP port")
    p.add_argument("--cafile", required=True, help="PEM file with the certificate(s) to trust")
    p.add_argument("--server-name", default="localhost", help="name to verify / send as SNI (default: localhost)")
    p.add_argument("--alpn", default="echo", help="ALPN protocol to offer (default: echo)")
    p.add_argument("--streams", type=int, default=0, help="bidirectional streams to open concurrently")
    p.add_argument("--stream-size", type=int, default=0, help="bytes to send on each stream")
    p.add_argument("--datagrams", type=int, default=0, help="datagrams to send")
    p.add_argument(
        "--datagram-size",
        type=int,
        default=64,
        help="bytes per datagram, %d..%d (default: 64)" % (SEQ_BYTES, MAX_DATAGRAM_SIZE),
    )
    p.add_argument("--timeout", type=float, default=20.0, help="deadline for the whole run in seconds (default: 20)")
    p.add_argument(
        "--wait-close",
        action="store_true",
        help="only connect, then wait until the server closes the connection",
    )
    p.add_argument("--session-ticket-out", metavar="PATH", help="save the server's first session ticket to PATH")
    p.add_argument("--session-ticket-in", metavar="PATH", help="resume with the session ticket saved in PATH")
    p.add_argument(
        "--early-data",
        action="store_true",
        help="send the streams before the handshake completes (0-RTT with --session-ticket-in)",
    )
    args = p.parse_args(argv)

    if not 0 < args.port < 65536:
        p.error("--port must be within 1..65535")
    if args.streams < 0:
        p.error("--streams must be >= 0")
    if args.stream_size < 0:
        p.error("--stream-size must be >= 0")
    if args.datagrams < 0 or args.datagrams >= 1 << (8 * SEQ_BYTES):
        p.error("--datagrams must be within 0..%d" % ((1 << (8 * SEQ_BYTES)) - 1))
    if args.datagrams > 0 and not SEQ_BYTES <= args.datagram_size <= MAX_DATAGRAM_SIZE:
        p.error("--datagram-size must be within %d..%d" % (SEQ_BYTES, MAX_DATAGRAM_SIZE))
    if not args.timeout > 0:
        p.error("--timeout must be > 0")
    if not args.alpn:
        p.error("--alpn must not be empty")
    if args.wait_close and (args.streams or args.datagrams):
        p.error("--wait-close cannot be combined with --streams or --datagrams")
    if args.early_data and args.wait_close:
        p.error("--early-data cannot be combined with --wait-close")
    args.ticket = None
    if args.session_ticket_in:
        try:
            with open(args.session_ticket_in, "rb") as f:
                args.ticket = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            p.error("cannot read --session-ticket-in: %s" % exc)
    check_cafile(p, args.cafile)
    return args


async def open_connection(args: argparse.Namespace, report: Report) -> EchoClientProtocol:
    """Create the UDP socket and QUIC connection and start the handshake."""
    loop = asyncio.get_running_loop()
    family, proto, addr = await resolve(args.host, args.port)

    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[args.alpn],
        server_name=args.server_name,
        max_datagram_frame_size=65536,
        # Our own idle timeout must not end the run before --timeout does;
        # the effective value is min(ours, server's) anyway.
        idle_timeout=max(60.0, args.timeout + 10.0),
        session_ticket=args.ticket,
    )
    config.load_verify_locations(cafile=args.cafile)
    ticket_received: asyncio.Future = loop.create_future()

    def on_ticket(ticket) -> None:
        # The first ticket is the one saved; later ones are dropped.
        if not ticket_received.done():
            ticket_received.set_result(ticket)

    quic = QuicConnection(configuration=config, session_ticket_handler=on_ticket)

    protocol = await open_endpoint(family, proto, addr, lambda: EchoClientProtocol(quic), log)
    protocol.report = report
    protocol.ticket_received = ticket_received
    # With --early-data the first flight leaves only once the streams are queued (run()).
    protocol.connect(addr, transmit=not args.early_data)
    return protocol


async def run_streams(proto: EchoClientProtocol, args: argparse.Namespace, report: Report) -> None:
    await collect_streams(queue_streams(proto, args), report)


def queue_streams(proto: EchoClientProtocol, args: argparse.Namespace) -> list:
    """Opens the streams, queues their data and transmits; returns one future per stream."""
    loop = asyncio.get_running_loop()
    futs = []
    for index in range(args.streams):
        data = stream_payload(index, args.stream_size)
        stream_id = proto._quic.get_next_available_stream_id()
        fut = loop.create_future()
        proto.streams[stream_id] = StreamCheck(index, stream_id, data, fut)
        # aioquic buffers everything and sends it as flow control allows.
        proto._quic.send_stream_data(stream_id, data, end_stream=True)
        futs.append(fut)
    proto.transmit()
    return futs


async def collect_streams(futs: list, report: Report) -> None:
    try:
        for fut in futs:
            ok = await asyncio.shield(fut)
            if ok:
                report.streams_ok += 1
            else:
                report.streams_failed += 1
    finally:
        # On timeout / cancellation, everything not yet finished has failed.
        done = report.streams_ok + report.streams_failed
        report.streams_failed += len(futs) - done


async def run_datagrams(proto: EchoClientProtocol, args: argparse.Namespace, report: Report) -> None:
    remote_max = proto.remote_max_datagram_frame_size()
    if remote_max is None:
        log("server did not enable DATAGRAM frames (no max_datagram_frame_size); none sent")
        return
    if remote_max != -1 and remote_max < args.datagram_size:
        log("server's max_datagram_frame_size %d < --datagram-size; none sent" % remote_max)
        return

    pattern = DatagramPattern(args.datagram_size)
    proto.dgram_pattern = pattern
    proto.dgram_expected = args.datagrams
    for seq in range(args.datagrams):
        while proto.datagrams_queued() >= DATAGRAM_WINDOW and not proto.is_terminated():
            await proto.wait_transmitted()
        if proto.is_terminated():
            break
        proto._quic.send_datagram_frame(pattern.payload(seq))
        report.datagrams_sent += 1
        proto.transmit()
    # Wait until aioquic has written the queued frames into packets.
    while proto.datagrams_queued() > 0 and not proto.is_terminated():
        await proto.wait_transmitted()
    if proto.is_terminated() or report.datagrams_sent == 0:
        return
    try:
        await asyncio.wait_for(asyncio.shield(proto.dgram_all_back), DATAGRAM_GRACE_SECS)
    except asyncio.TimeoutError:
        log(
            "%d of %d datagrams echoed within %.1fs of the last send"
            % (len(proto.dgram_seen), report.datagrams_sent, DATAGRAM_GRACE_SECS)
        )


async def run(args: argparse.Namespace, report: Report, holder: list) -> int:
    if args.session_ticket_in or args.session_ticket_out or args.early_data:
        report.resumption = {"session_resumed": None, "early_data_accepted": None}
    proto = await open_connection(args, report)
    holder.append(proto)
    early: list = []
    if args.early_data:
        # Queued before the first flight leaves, the stream data travels in 0-RTT packets
        # right behind the ClientHello when the ticket allows it.
        if args.streams:
            futs = queue_streams(proto, args)
            early.append(asyncio.ensure_future(collect_streams(futs, report)))
        proto.transmit()
    try:
        alpn = await asyncio.shield(proto.handshake_done)
    except ConnectionError as exc:
        log("handshake failed: %s" % exc)
        for t in early:
            t.cancel()
        await asyncio.gather(*early, return_exceptions=True)
        return 1
    report.connected = True
    report.alpn = alpn
    # A fixed marker tests can wait for (e.g. before shutting the server
    # down in --wait-close runs); the JSON still comes only at the end.
    log("connected (alpn %s)" % alpn)
    if alpn != args.alpn:
        log("negotiated ALPN %r, offered %r" % (alpn, args.alpn))

    if args.wait_close:
        await asyncio.shield(proto.terminated)
        return 0

    tasks = list(early)
    if args.streams and not early:
        tasks.append(asyncio.ensure_future(run_streams(proto, args, report)))
    if args.datagrams:
        tasks.append(asyncio.ensure_future(run_datagrams(proto, args, report)))
    try:
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    if args.session_ticket_out:
        ticket = await asyncio.shield(proto.ticket_received)
        with open(args.session_ticket_out, "wb") as f:
            pickle.dump(ticket, f)
        log("session ticket saved to %s" % args.session_ticket_out)
    return 0


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    report = Report()

    def timed_out() -> str:
        if not report.connected:
            return " before the handshake completed"
        if args.wait_close:
            return " waiting for the server to close"
        return ""

    return run_client(args, report, run, log, timed_out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
