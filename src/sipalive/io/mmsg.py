"""Batched UDP I/O: recvmmsg(2) and sendmmsg(2) through ctypes (Linux, stdlib only).

One system call moves a whole batch of datagrams, where ``recvfrom``/``sendto`` cost one each:
at tens of thousands of datagrams a second the per-call cost is a large share of the time.

    batch = MmsgSocket(sock, batch=64)       # sock: a bound AF_INET/AF_INET6 UDP socket
    for data, addr in batch.recv():          # what is queued now (at most ``batch``), [] if none
        ...
    sent = batch.send([(reply, addr), ...])  # how many went out; stops at the first error

Addresses are ``(host, port)`` as ``socket.recvfrom`` gives them, without the IPv6 flow
information (an IPv6 link-local source keeps its ``%scope``). A datagram longer than
``max_size`` comes back cut to ``max_size + 1`` octets, so the caller sees that it was too
long. :func:`available` says whether the C library has the calls (else use the socket).
The objects of a process share their buffers (one 4 MiB area, not one per socket): use them
from one thread; the socket may be blocking or not (the calls never wait).

On a socket bound to a wildcard address, ``pktinfo=True`` (IP_PKTINFO, IPV6_RECVPKTINFO)
tells which local address each datagram was sent to: after ``recv``, ``batch.locals[i]`` is
the packed address (4 or 16 octets) of datagram i, and ``send(items, locals_)`` sends each
datagram from the given packed address (RFC 3261 §18.2.2 wants an answer to come from the
address the request reached).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

# struct mmsghdr on LP64 Linux: msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control,
# msg_controllen, msg_flags, then msg_len; only msg_namelen, msg_flags and msg_len are read
_HEAD = struct.Struct("=8xI4x8x8x8x8xi4xI4x")
_NAMELEN = struct.Struct("=I")  # at offset 8 of a header
# msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control, msg_controllen (pad octets are
# written too, as zeros: hence the whole header, iov included)
_OUT_HEAD = struct.Struct("=QI4xQQQQ")
_IOV_LEN = struct.Struct("=Q")  # at offset 8 of a struct iovec
_MAX_UDP = 65536  # a UDP payload is at most 65507 octets (65527 over IPv6 jumbo-less)
_CONTROLLEN = struct.Struct("=Q")  # at offset 40
_CMSGHDR = struct.Struct("=Qii")  # cmsg_len, cmsg_level, cmsg_type; the data follows at 16
_CONTROL_SPACE = 64  # CMSG_SPACE(sizeof(struct in6_pktinfo)) = 40, rounded up
_NAME_LEN = 28  # sizeof(struct sockaddr_in6), enough for either family
_IP_PKTINFO = 8  # <linux/in.h>; the socket module does not name it
_IPV6_RECVPKTINFO = 49
_IPV6_PKTINFO = 50
_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20
_CACHE_MAX = 65536


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _recvmmsg = _libc.recvmmsg
    _sendmmsg = _libc.sendmmsg
except (OSError, AttributeError):
    _libc = None
else:
    _recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    _recvmmsg.restype = ctypes.c_int
    _sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    _sendmmsg.restype = ctypes.c_int


def available() -> bool:
    return _libc is not None


def _decode_sockaddr(raw: bytes) -> tuple[str, int]:
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    scope = struct.unpack_from("=I", raw, 24)[0]
    if scope:
        try:
            host += "%" + socket.if_indextoname(scope)
        except OSError:
            host += f"%{scope}"
    return host, port


def _encode_sockaddr(family: int, addr: tuple[str, int]) -> bytes:
    host, port = addr[0], addr[1]
    if family == socket.AF_INET:
        return (
            struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)
        )
    # getaddrinfo resolves a %scope suffix to its index, as sendto does
    info = socket.getaddrinfo(
        host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
    )
    sockaddr: tuple[Any, ...] = info[0][4]
    flow, scope = sockaddr[2], sockaddr[3]
    return (
        struct.pack("=H", family)
        + struct.pack("!HI", port, flow)
        + socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        + struct.pack("=I", scope)
    )


def pktinfo(local: bytes) -> tuple[int, int, bytes]:
    """The ancillary data (level, type, data) that sends a datagram from the packed local
    address ``local`` (4 or 16 octets), for ``socket.sendmsg`` and ``MmsgSocket.send``."""
    if len(local) == 4:  # struct in_pktinfo: ifindex 0, ipi_spec_dst = the source
        return socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("=i4s4x", 0, local)
    return socket.IPPROTO_IPV6, _IPV6_PKTINFO, struct.pack("=16si", local, 0)  # in6_pktinfo


class _RecvArea:
    """Receive buffers and headers, shared by the MmsgSocket objects of a process that have
    the same batch, size and pktinfo: a listener on 1000 addresses holds one area, not 1000
    (``recv`` copies out what it returns, so sharing is safe within one thread)."""

    def __init__(self, batch: int, size: int, pktinfo: bool) -> None:
        self.bufs = ctypes.create_string_buffer(size * batch)
        self.names = ctypes.create_string_buffer(_NAME_LEN * batch)
        self.control = ctypes.create_string_buffer(_CONTROL_SPACE * batch if pktinfo else 1)
        self.headers = (_Mmsghdr * batch)()
        self.iovs = (_Iovec * batch)()
        base = ctypes.addressof(self.bufs)
        names = ctypes.addressof(self.names)
        control = ctypes.addressof(self.control)
        for i in range(batch):
            self.iovs[i].iov_base = base + i * size
            self.iovs[i].iov_len = size
            hdr = self.headers[i].msg_hdr
            hdr.msg_iov = ctypes.pointer(self.iovs[i])
            hdr.msg_iovlen = 1
            hdr.msg_name = names + i * _NAME_LEN
            hdr.msg_namelen = _NAME_LEN
            if pktinfo:
                hdr.msg_control = control + i * _CONTROL_SPACE
                hdr.msg_controllen = _CONTROL_SPACE
        self.heads_view = memoryview(self.headers).cast("B")
        self.names_view = memoryview(self.names).cast("B")
        self.bufs_view = memoryview(self.bufs).cast("B")
        self.control_view = memoryview(self.control).cast("B")


class _SendArea:
    """Send buffers and headers, shared like ``_RecvArea``: ``send`` copies each datagram
    into its slot (a memcpy costs less than pointing ctypes at the bytes object)."""

    def __init__(self, batch: int) -> None:
        size = _MAX_UDP
        self.bufs = ctypes.create_string_buffer(size * batch)
        self.headers = (_Mmsghdr * batch)()
        self.iovs = (_Iovec * batch)()
        base = ctypes.addressof(self.bufs)
        self.slots = [i * size for i in range(batch)]
        self.iov_at = [
            ctypes.addressof(self.iovs) + i * ctypes.sizeof(_Iovec) for i in range(batch)
        ]
        for i in range(batch):
            self.iovs[i].iov_base = base + i * size
            hdr = self.headers[i].msg_hdr
            hdr.msg_iov = ctypes.pointer(self.iovs[i])
            hdr.msg_iovlen = 1
        self.heads_view = memoryview(self.headers).cast("B")
        self.iovs_view = memoryview(self.iovs).cast("B")
        self.bufs_view = memoryview(self.bufs).cast("B")


_SEND_AREAS: dict[int, _SendArea] = {}
_AREAS: dict[tuple[int, int, bool], _RecvArea] = {}


class MmsgSocket:
    """recvmmsg/sendmmsg on one UDP socket. Use the objects of a process from one thread:
    they share their receive buffers."""

    def __init__(
        self, sock: socket.socket, batch: int = 64, max_size: int = 65535, pktinfo: bool = False
    ) -> None:
        if _libc is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg not available")
        self.sock = sock
        self.family = sock.family
        self.batch = batch
        self._fd = sock.fileno()
        self._size = max_size + 1
        key = (batch, self._size, pktinfo)
        area = _AREAS.get(key)
        if area is None:
            area = _AREAS[key] = _RecvArea(batch, self._size, pktinfo)
        self._in = area.headers
        self._heads = area.heads_view
        self._names_view = area.names_view
        self._bufs_view = area.bufs_view
        self._control_view = area.control_view
        send_area = _SEND_AREAS.get(batch)
        if send_area is None:
            send_area = _SEND_AREAS[batch] = _SendArea(batch)
        self._send_area = send_area
        self._sources: dict[bytes, tuple[str, int]] = {}
        # destination -> (address of its sockaddr, its length, the buffer holding it)
        self._dests: dict[tuple[str, int], tuple[int, int, ctypes.Array[ctypes.c_char]]] = {}
        self.pktinfo = pktinfo
        self.locals: list[bytes] = []
        self._controls: dict[bytes, ctypes.Array[ctypes.c_char]] = {}
        if pktinfo:
            if self.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)

    def recv(self) -> list[tuple[bytes, tuple[str, int]]]:
        """The datagrams queued now, at most ``batch``; [] if none. Raises OSError on an error
        other than "nothing to read" or an interrupted call."""
        n = _recvmmsg(self._fd, self._in, self.batch, _MSG_DONTWAIT, None)
        if n <= 0:
            err = ctypes.get_errno() if n < 0 else 0
            if n == 0 or err in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(err, "recvmmsg: " + errno.errorcode.get(err, str(err)))
        # the kernel wrote msg_len, msg_flags and msg_namelen of the first n headers: read them
        # as plain octets (one ctypes object per field would cost more than the system call)
        heads = self._heads
        names = self._names_view
        bufs = self._bufs_view
        sources = self._sources
        size = self._size
        name_len = _NAME_LEN
        out: list[tuple[bytes, tuple[str, int]]] = []
        if self.pktinfo:
            self.locals = [self._local(i) for i in range(n)]
        for i, (namelen, flags, length) in enumerate(_HEAD.iter_unpack(heads[: n * _HEAD.size])):
            at = i * name_len
            raw = names[at : at + namelen].tobytes()
            source = sources.get(raw)
            if source is None:
                source = _decode_sockaddr(raw)
                if len(sources) >= _CACHE_MAX:
                    sources.clear()
                sources[raw] = source
            if flags & _MSG_TRUNC:
                length = size
            at = i * size
            out.append((bufs[at : at + length].tobytes(), source))
            _NAMELEN.pack_into(heads, i * _HEAD.size + 8, name_len)  # for the next call
        return out

    def _local(self, i: int) -> bytes:
        """The destination address of received datagram i (empty if the kernel gave none)."""
        at = i * _CONTROL_SPACE
        control = self._control_view
        controllen = _CONTROLLEN.unpack_from(self._heads, i * _HEAD.size + 40)[0]
        _CONTROLLEN.pack_into(self._heads, i * _HEAD.size + 40, _CONTROL_SPACE)
        if controllen < _CMSGHDR.size:
            return b""
        _, level, kind = _CMSGHDR.unpack_from(control, at)
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
            return control[at + 24 : at + 28].tobytes()  # in_pktinfo.ipi_addr
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO:
            return control[at + 16 : at + 32].tobytes()  # in6_pktinfo.ipi6_addr
        return b""

    def _control_for(self, local: bytes) -> ctypes.Array[ctypes.c_char]:
        control = self._controls.get(local)
        if control is None:
            level, kind, data = pktinfo(local)
            raw = _CMSGHDR.pack(_CMSGHDR.size + len(data), level, kind) + data
            raw += bytes(-len(raw) % 8)
            control = ctypes.create_string_buffer(raw, len(raw))
            if len(self._controls) >= _CACHE_MAX:
                self._controls.clear()
            self._controls[local] = control
        return control

    def send(
        self,
        items: Sequence[tuple[bytes, tuple[str, int]]],
        locals_: Sequence[bytes] | None = None,
    ) -> int:
        """Send up to ``batch`` datagrams at a time; the number sent. A datagram the kernel
        refuses (no buffer space, unreachable) ends the call: the rest is not sent.
        ``locals_[i]``, if given and not empty, is the packed source address of datagram i."""
        area = self._send_area
        heads = area.heads_view
        iovs = area.iovs_view
        bufs = area.bufs_view
        slots = area.slots
        iov_at = area.iov_at
        dests = self._dests
        sent = 0
        stop = False
        while sent < len(items) and not stop:
            chunk = items[sent : sent + self.batch]
            keep: list[object] = []  # alive until the call returns, whatever the caches do
            for i, (data, addr) in enumerate(chunk):
                n = len(data)
                if n > _MAX_UDP:  # EMSGSIZE: send what comes before it, then stop
                    chunk = chunk[:i]
                    stop = True
                    break
                dest = dests.get(addr)
                if dest is None:
                    raw = _encode_sockaddr(self.family, addr)
                    buf = ctypes.create_string_buffer(raw, len(raw))
                    dest = (ctypes.addressof(buf), len(raw), buf)
                    if len(dests) >= _CACHE_MAX:
                        dests.clear()
                    dests[addr] = dest
                keep.append(dest)
                control = 0
                controllen = 0
                if locals_ is not None and locals_[sent + i]:
                    cbuf = self._control_for(locals_[sent + i])
                    keep.append(cbuf)
                    control = ctypes.addressof(cbuf)
                    controllen = len(cbuf)
                at = slots[i]
                bufs[at : at + n] = data
                _OUT_HEAD.pack_into(
                    heads, i * _HEAD.size, dest[0], dest[1], iov_at[i], 1, control, controllen
                )
                _IOV_LEN.pack_into(iovs, i * 16 + 8, n)
            n = _sendmmsg(self._fd, area.headers, len(chunk), _MSG_DONTWAIT) if chunk else 0
            if n < len(chunk) or n <= 0:
                stop = True
            sent += max(n, 0)
        return sent
