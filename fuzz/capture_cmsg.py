#!/usr/bin/env python3
"""Writes the seed corpus of the `cmsg` fuzz target, fuzz/seeds/cmsg/, from the kernel.

Each seed is what the kernel hands a shard with one received datagram: the control buffer
of a recvmsg on a socket with the options quring's shard sockets set (src/datapath/socket.rs:
UDP_GRO, IP_PKTINFO + IP_RECVTOS, IPV6_RECVPKTINFO + IPV6_RECVTCLASS), or the sender's
address (msg_name). The datagrams go over loopback: GSO batches that arrive as one GRO
batch, single datagrams, each ECN codepoint, IPv4, IPv6, and IPv4 on a dual-stack socket.

Python's recvmsg returns each control message as the kernel wrote it (level, type, data, in
the kernel's order); this script lays them out again as the kernel does (cmsghdr, padded to
CMSG_SPACE), which is the buffer quring's datapath decodes. Rust has no safe recvmsg that
returns raw control bytes, and unsafe code belongs in src/datapath/ only.

Usage: python3 fuzz/capture_cmsg.py   (Linux, x86_64 or any 64-bit little-endian machine)
"""

import os
import socket
import struct
import sys

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_TOS = 1
IP_PKTINFO = 8
IP_RECVTOS = 13
IPV6_RECVPKTINFO = 49
IPV6_RECVTCLASS = 66
IPV6_TCLASS = 67

# quring's receive control buffer (cmsg::RECV_CONTROL_LEN).
RECV_CONTROL_LEN = 256
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "cmsg")


def receiver(family, host, dual_stack=False):
    """A socket with the receive options of a quring shard socket, bound to host:0."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
    if family == socket.AF_INET or dual_stack:
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
    s.setsockopt(SOL_UDP, UDP_GRO, 1)
    s.settimeout(5)  # a deadline: a datagram that never arrives fails the run
    s.bind((host, 0))
    return s


def layout(ancdata):
    """The control buffer the kernel wrote: each message as cmsghdr + data, padded."""
    out = b""
    for level, kind, data in ancdata:
        msg = struct.pack("@Nii", socket.CMSG_LEN(len(data)), level, kind) + data
        out += msg.ljust(socket.CMSG_SPACE(len(data)), b"\0")
    return out


def sockaddr(addr):
    """struct sockaddr_in / sockaddr_in6 for a Python address tuple."""
    if len(addr) == 2:
        return struct.pack("=H", socket.AF_INET) + struct.pack(">H", addr[1]) + \
            socket.inet_pton(socket.AF_INET, addr[0]) + bytes(8)
    host, port, flow, scope = addr
    return struct.pack("=H", socket.AF_INET6) + struct.pack(">HI", port, flow) + \
        socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", scope)


def send(tx, dest, payload, segment, ecn):
    cmsgs = []
    if segment:
        cmsgs.append((SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment)))
    if ecn:
        if tx.family == socket.AF_INET:
            cmsgs.append((socket.IPPROTO_IP, IP_TOS, struct.pack("=i", ecn)))
        else:
            cmsgs.append((socket.IPPROTO_IPV6, IPV6_TCLASS, struct.pack("=i", ecn)))
    tx.sendmsg([payload], cmsgs, 0, dest)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")


def main():
    if struct.calcsize("@N") != 8 or sys.byteorder != "little":
        sys.exit("capture_cmsg.py: the seeds are for 64-bit little-endian machines")
    os.makedirs(OUT, exist_ok=True)
    # (seed prefix, receiving socket, sending family, destination host)
    setups = [
        ("v4", receiver(socket.AF_INET, "127.0.0.1"), socket.AF_INET, "127.0.0.1"),
        ("v6", receiver(socket.AF_INET6, "::1"), socket.AF_INET6, "::1"),
        ("dual", receiver(socket.AF_INET6, "::", dual_stack=True), socket.AF_INET, "127.0.0.1"),
    ]
    # (seed name, payload bytes, GSO segment size, ECN codepoint)
    sends = [
        ("gso-ect0", 3 * 1200, 1200, 0b10),
        ("gso-short-tail-ect1", 2 * 1200 + 500, 1200, 0b01),
        ("single-ce", 1200, 0, 0b11),
        ("single-not-ect", 40, 0, 0),
    ]
    for prefix, rx, family, host in setups:
        tx = socket.socket(family, socket.SOCK_DGRAM)
        tx.bind((host, 0))
        dest = (host, rx.getsockname()[1])
        for name, size, segment, ecn in sends:
            send(tx, dest, bytes(size), segment, ecn)
            data, anc, flags, src = rx.recvmsg(65536, RECV_CONTROL_LEN)
            if flags & socket.MSG_CTRUNC:
                sys.exit(f"{prefix}-{name}: control messages truncated")
            if len(data) != size:
                sys.exit(f"{prefix}-{name}: got {len(data)} of {size} bytes in one receive")
            write(f"recv-{prefix}-{name}", layout(anc))
        write(f"name-{prefix}", sockaddr(src))
        tx.close()
        rx.close()


if __name__ == "__main__":
    main()
