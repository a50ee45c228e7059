"""STUN message codec (RFC 5389), with the RFC 5780 NAT-behaviour attributes.

Pure: bytes in, a :class:`StunMessage` out, and builders that return bytes. The only
exception :func:`parse` raises is :class:`~sipalive.errors.ParseError`; the builders raise
:class:`~sipalive.errors.LocalProtocolError` when called with values that cannot be encoded.

Layout of a message (RFC 5389 §6)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |0 0|     STUN Message Type     |         Message Length        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                         Magic Cookie                          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                     Transaction ID (96 bits)                  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

followed by type-length-value attributes, each padded to a multiple of 4 bytes (§15).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from sipalive.errors import LocalProtocolError, ParseError

Address = tuple[str, int]
"""An (IP address text, port) pair, as ``ipaddress`` formats the address."""

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
TRANSACTION_ID_SIZE = 12

BINDING = 0x001
"""The Binding method (RFC 5389 §18.1), the only method RFC 5389 defines."""

# Attribute types: RFC 5389 §18.2, and RFC 5780 §7 for the NAT behaviour discovery ones.
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
XOR_MAPPED_ADDRESS = 0x0020
PADDING = 0x0026
RESPONSE_PORT = 0x0027
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E  # RFC 5389 §15.5: "STUN", so a CRC-32 of other protocols differs
_INTEGRITY_SIZE = 20  # HMAC-SHA1
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02
_PLAIN_ADDRESS_TYPES = frozenset({MAPPED_ADDRESS, ALTERNATE_SERVER, RESPONSE_ORIGIN, OTHER_ADDRESS})
_MAX_USERNAME = 513  # RFC 5389 §15.3: "MUST have a length less than 513 bytes"
_MAX_TEXT = 763  # RFC 5389 §15.6, §15.10: reason phrase and SOFTWARE, in bytes
_CHANGE_IP = 0x04  # RFC 5780 §7.2, flag A
_CHANGE_PORT = 0x02  # RFC 5780 §7.2, flag B


class StunClass(Enum):
    """The message class (RFC 5389 §6), the two bits C1 C0 spread across the type field."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """CHANGE-REQUEST (RFC 5780 §7.2): answer from the other address and/or the other port."""

    change_ip: bool
    change_port: bool


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One STUN message. ``attributes`` keeps wire order and repeats; values are unpadded.

    ``raw`` is the datagram :func:`parse` read, kept because MESSAGE-INTEGRITY and
    FINGERPRINT cover the bytes as sent (padding included), which re-encoding the attributes
    cannot reproduce. Attributes that followed MESSAGE-INTEGRITY, other than FINGERPRINT, are
    not in ``attributes``: RFC 5389 §15.4 says to ignore them, since nothing vouches for them.
    """

    msg_class: StunClass
    method: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of ``attr_type`` (RFC 5389 §15: later ones are
        ignored), or None."""
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None

    def address(self, attr_type: int) -> Address | None:
        """An address-typed attribute, decoded (XOR-MAPPED-ADDRESS un-XORed), or None."""
        value = self.get(attr_type)
        if value is None:
            return None
        if attr_type == XOR_MAPPED_ADDRESS:
            return decode_xor_address(value, self.transaction_id)
        return decode_address(value)

    @property
    def xor_mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS (RFC 5389 §15.2): where the server saw the request come from."""
        return self.address(XOR_MAPPED_ADDRESS)

    @property
    def mapped_address(self) -> Address | None:
        """MAPPED-ADDRESS (RFC 5389 §15.1), sent by servers for RFC 3489 clients."""
        return self.address(MAPPED_ADDRESS)

    @property
    def response_origin(self) -> Address | None:
        """RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from."""
        return self.address(RESPONSE_ORIGIN)

    @property
    def other_address(self) -> Address | None:
        """OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address and port."""
        return self.address(OTHER_ADDRESS)

    @property
    def change_request(self) -> ChangeRequest | None:
        """CHANGE-REQUEST (RFC 5780 §7.2), or None."""
        value = self.get(CHANGE_REQUEST)
        return None if value is None else decode_change_request(value)

    @property
    def response_port(self) -> int | None:
        """RESPONSE-PORT (RFC 5780 §7.5), or None."""
        value = self.get(RESPONSE_PORT)
        return None if value is None else decode_response_port(value)

    @property
    def username(self) -> str | None:
        """USERNAME (RFC 5389 §15.3), or None."""
        value = self.get(USERNAME)
        return None if value is None else _decode_username(value)

    @property
    def software(self) -> str | None:
        """SOFTWARE (RFC 5389 §15.10), or None.

        Decoded leniently: it is only for logs, and bad UTF-8 in it should not cost the
        mapped address that came with it.
        """
        value = self.get(SOFTWARE)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def error_code(self) -> tuple[int, str] | None:
        """ERROR-CODE (RFC 5389 §15.6) as (code, reason phrase), or None."""
        value = self.get(ERROR_CODE)
        return None if value is None else _decode_error_code(value)

    @property
    def fingerprint_ok(self) -> bool:
        """True when the message carried a FINGERPRINT and it matches (RFC 5389 §15.5).

        :func:`parse` already rejects a wrong one, so for a parsed message this says whether
        the sender used the FINGERPRINT mechanism at all.
        """
        offset = _attribute_offset(self.raw, FINGERPRINT)
        if offset is None:
            return False
        return _fingerprint(self.raw[:offset]) == self.raw[offset + 4 : offset + 8]

    def integrity_ok(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY (RFC 5389 §15.4) with ``key``.

        For short-term credentials (§10.1.1) the key is the SASLprep'ed password as UTF-8;
        False when the message has no MESSAGE-INTEGRITY.
        """
        offset = _attribute_offset(self.raw, MESSAGE_INTEGRITY)
        if offset is None:
            return False
        expected = self.raw[offset + 4 : offset + 4 + _INTEGRITY_SIZE]
        return hmac.compare_digest(_integrity(key, self.raw[:offset]), expected)


def is_stun(data: bytes) -> bool:
    """Tell a STUN datagram from SIP on a shared UDP port (RFC 5626 §4.4.2, RFC 7983).

    STUN starts with two zero bits; a SIP message starts with a letter (0x41 and up) and so
    never does. A CRLF keep-alive starts with 0x0D, which does, so the magic cookie and a
    length field that accounts for every byte are checked as well: the 2 or 4 bytes of a
    keep-alive cannot hold the 20-byte header. FINGERPRINT is not required, since RFC 5626
    peers need not send it; :func:`parse` still checks it when present.
    """
    return (
        len(data) >= HEADER_SIZE
        and data[0] & 0xC0 == 0
        and data[4:8] == _COOKIE_BYTES
        and int.from_bytes(data[2:4], "big") == len(data) - HEADER_SIZE
        and len(data) % 4 == 0
    )


def parse(data: bytes, max_size: int = 2048) -> StunMessage:
    """Parse one STUN message that fills ``data`` exactly (a UDP datagram).

    Raises :class:`ParseError` for anything RFC 5389 §6, §7.3 and §15 rule out: a short or
    oversized datagram (413 for the latter), nonzero leading bits, a wrong magic cookie, a
    length that is not a multiple of 4 or does not match the datagram, an attribute or its
    padding running past the end, MESSAGE-INTEGRITY or FINGERPRINT of the wrong size,
    FINGERPRINT not last or not matching, a bad address family or length in an address
    attribute, a malformed ERROR-CODE, CHANGE-REQUEST, RESPONSE-PORT or USERNAME. It raises
    nothing else, whatever the input.
    """
    data = bytes(data)
    size = len(data)
    if size > max_size:
        raise ParseError(f"STUN message of {size} bytes exceeds the {max_size}-byte limit", 413)
    if size < HEADER_SIZE:
        raise ParseError(f"{size} bytes is shorter than the 20-byte STUN header")
    msg_type, length = struct.unpack_from("!HH", data)
    if msg_type & 0xC000:
        raise ParseError("the first two bits of a STUN message must be zero")
    if data[4:8] != _COOKIE_BYTES:
        raise ParseError("wrong magic cookie: not an RFC 5389 STUN message")
    if length % 4:
        raise ParseError(f"STUN message length {length} is not a multiple of 4")
    if HEADER_SIZE + length != size:
        raise ParseError(f"STUN length field says {length} bytes of attributes, got {size - 20}")
    transaction_id = data[8:HEADER_SIZE]
    msg_class, method = _decode_type(msg_type)

    attributes: list[tuple[int, bytes]] = []
    after_integrity = False
    offset = HEADER_SIZE
    # offset and size are multiples of 4, so an attribute header always fits.
    while offset < size:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + attr_len
        padded_end = start + _padded(attr_len)
        if end > size:
            raise ParseError(f"attribute 0x{attr_type:04x} runs {end - size} bytes past the end")
        if padded_end > size:
            raise ParseError(f"attribute 0x{attr_type:04x} is missing its padding")
        value = data[start:end]
        if attr_type == FINGERPRINT:
            if attr_len != 4:
                raise ParseError(f"FINGERPRINT of {attr_len} bytes, not 4")
            if padded_end != size:
                raise ParseError("FINGERPRINT is not the last attribute")
            if _fingerprint(data[:offset]) != value:
                raise ParseError("FINGERPRINT does not match the message")
        elif after_integrity:
            offset = padded_end
            continue
        elif attr_type == MESSAGE_INTEGRITY:
            if attr_len != _INTEGRITY_SIZE:
                raise ParseError(f"MESSAGE-INTEGRITY of {attr_len} bytes, not 20")
            after_integrity = True
        else:
            _check_value(attr_type, value, transaction_id)
        attributes.append((attr_type, value))
        offset = padded_end
    return StunMessage(msg_class, method, transaction_id, tuple(attributes), data)


def encode(
    msg_class: StunClass,
    method: int,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    integrity_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Encode a message; MESSAGE-INTEGRITY and FINGERPRINT, if asked for, go last, in the
    order RFC 5389 §15.4 and §15.5 require. Values are zero-padded to 4 bytes."""
    if not 0 <= method <= 0xFFF:
        raise LocalProtocolError(f"STUN method 0x{method:x} does not fit in 12 bits")
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise LocalProtocolError(f"transaction ID of {len(transaction_id)} bytes, not 12")
    msg_type = _encode_type(msg_class, method)
    body = bytearray()
    for attr_type, value in attributes:
        if attr_type in (MESSAGE_INTEGRITY, FINGERPRINT):
            raise LocalProtocolError("MESSAGE-INTEGRITY and FINGERPRINT are computed, not given")
        body += _attribute(attr_type, value)
    length = len(body) + (4 + _INTEGRITY_SIZE if integrity_key is not None else 0)
    length += 8 if fingerprint else 0
    if length > 0xFFFF:
        raise LocalProtocolError(f"{length} bytes of attributes exceed the 16-bit length")
    if integrity_key is not None:
        head = _header(msg_type, len(body) + 4 + _INTEGRITY_SIZE, transaction_id)
        body += _attribute(MESSAGE_INTEGRITY, _integrity(integrity_key, head + body))
    if fingerprint:
        head = _header(msg_type, len(body) + 8, transaction_id)
        body += _attribute(FINGERPRINT, _fingerprint(head + body))
    return _header(msg_type, length, transaction_id) + bytes(body)


def binding_request(
    transaction_id: bytes,
    software: str | None = None,
    fingerprint: bool = True,
    *,
    username: str | None = None,
    integrity_key: bytes | None = None,
    attributes: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """A Binding request (RFC 5389 §7.1). ``attributes`` carries extras such as RFC 5780's
    CHANGE-REQUEST or RESPONSE-PORT; ``username`` and ``integrity_key`` sign it with
    short-term credentials (§10.1.1)."""
    attrs = list(attributes)
    if username is not None:
        attrs.append((USERNAME, _encode_username(username)))
    if software is not None:
        attrs.append((SOFTWARE, _encode_text(software, "SOFTWARE")))
    return encode(
        StunClass.REQUEST,
        BINDING,
        transaction_id,
        attrs,
        integrity_key=integrity_key,
        fingerprint=fingerprint,
    )


def binding_success(
    transaction_id: bytes,
    mapped: Address,
    software: str | None = None,
    fingerprint: bool = True,
    *,
    include_mapped_address: bool = False,
    integrity_key: bytes | None = None,
    attributes: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """A Binding success response carrying XOR-MAPPED-ADDRESS (RFC 5389 §7.3.1.1, §15.2).

    ``include_mapped_address`` adds a plain MAPPED-ADDRESS too, for clients that predate
    XOR-MAPPED-ADDRESS (RFC 5389 §12.2); ``attributes`` carries extras such as RFC 5780's
    RESPONSE-ORIGIN and OTHER-ADDRESS. ``integrity_key`` signs it (§10.1.2).
    """
    attrs = [(XOR_MAPPED_ADDRESS, encode_xor_address(mapped, transaction_id))]
    if include_mapped_address:
        attrs.append((MAPPED_ADDRESS, encode_address(mapped)))
    attrs.extend(attributes)
    if software is not None:
        attrs.append((SOFTWARE, _encode_text(software, "SOFTWARE")))
    return encode(
        StunClass.SUCCESS,
        BINDING,
        transaction_id,
        attrs,
        integrity_key=integrity_key,
        fingerprint=fingerprint,
    )


def binding_error(
    transaction_id: bytes,
    code: int,
    reason: str,
    software: str | None = None,
    fingerprint: bool = True,
    *,
    integrity_key: bytes | None = None,
) -> bytes:
    """A Binding error response with ERROR-CODE ``code`` (300-699) and ``reason``
    (RFC 5389 §15.6)."""
    if not 300 <= code <= 699:
        raise LocalProtocolError(f"STUN error code {code} is outside 300-699")
    hundreds, number = divmod(code, 100)
    attrs = [
        (ERROR_CODE, struct.pack("!HBB", 0, hundreds, number) + _encode_text(reason, "reason"))
    ]
    if software is not None:
        attrs.append((SOFTWARE, _encode_text(software, "SOFTWARE")))
    return encode(
        StunClass.ERROR,
        BINDING,
        transaction_id,
        attrs,
        integrity_key=integrity_key,
        fingerprint=fingerprint,
    )


def encode_address(address: Address) -> bytes:
    """MAPPED-ADDRESS format (RFC 5389 §15.1), shared by ALTERNATE-SERVER, RESPONSE-ORIGIN
    and OTHER-ADDRESS (RFC 5780 §7.3, §7.4)."""
    family, port, packed = _pack_address(address)
    return struct.pack("!BBH", 0, family, port) + packed


def decode_address(value: bytes) -> Address:
    """Decode the MAPPED-ADDRESS format (RFC 5389 §15.1)."""
    family, port = _check_address_shape(value)
    return _address_text(family, value[4:]), port


def encode_xor_address(address: Address, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS (RFC 5389 §15.2): the port XORed with the cookie's top 16 bits, the
    address with the cookie (IPv4) or the cookie and transaction ID (IPv6)."""
    family, port, packed = _pack_address(address)
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise LocalProtocolError(f"transaction ID of {len(transaction_id)} bytes, not 12")
    mask = _COOKIE_BYTES + transaction_id
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + _xor(packed, mask)


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    """Decode XOR-MAPPED-ADDRESS (RFC 5389 §15.2)."""
    family, x_port = _check_address_shape(value)
    mask = _COOKIE_BYTES + transaction_id
    return _address_text(family, _xor(value[4:], mask)), x_port ^ (MAGIC_COOKIE >> 16)


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    """CHANGE-REQUEST (RFC 5780 §7.2)."""
    flags = (_CHANGE_IP if change_ip else 0) | (_CHANGE_PORT if change_port else 0)
    return flags.to_bytes(4, "big")


def decode_change_request(value: bytes) -> ChangeRequest:
    """Decode CHANGE-REQUEST (RFC 5780 §7.2); other bits are ignored, as the RFC says."""
    if len(value) != 4:
        raise ParseError(f"CHANGE-REQUEST of {len(value)} bytes, not 4")
    flags = int.from_bytes(value, "big")
    return ChangeRequest(bool(flags & _CHANGE_IP), bool(flags & _CHANGE_PORT))


def encode_response_port(port: int) -> bytes:
    """RESPONSE-PORT (RFC 5780 §7.5): the port and 16 bits of padding."""
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port {port} is outside 0-65535")
    return struct.pack("!HH", port, 0)


def decode_response_port(value: bytes) -> int:
    """Decode RESPONSE-PORT (RFC 5780 §7.5).

    Two bytes are accepted as well as four: the RFC draws the padding inside the attribute
    but some implementations leave it to ordinary attribute padding.
    """
    if len(value) not in (2, 4):
        raise ParseError(f"RESPONSE-PORT of {len(value)} bytes, not 4")
    return int.from_bytes(value[:2], "big")


def _encode_type(msg_class: StunClass, method: int) -> int:
    # RFC 5389 §6: M11..M7 C1 M6..M4 C0 M3..M0.
    klass = msg_class.value
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((klass & 0b01) << 4)
        | ((klass & 0b10) << 7)
    )


def _decode_type(msg_type: int) -> tuple[StunClass, int]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    klass = ((msg_type >> 4) & 0b01) | ((msg_type >> 7) & 0b10)
    return StunClass(klass), method


def _header(msg_type: int, length: int, transaction_id: bytes) -> bytes:
    return struct.pack("!HHI", msg_type, length, MAGIC_COOKIE) + transaction_id


def _padded(length: int) -> int:
    return (length + 3) & ~3


def _attribute(attr_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise LocalProtocolError(f"attribute 0x{attr_type:04x} value exceeds 65535 bytes")
    return (
        struct.pack("!HH", attr_type, len(value)) + value + bytes(_padded(len(value)) - len(value))
    )


def _fingerprint(prefix: bytes) -> bytes:
    # ``prefix`` is the message up to FINGERPRINT, its length field already counting it.
    return (zlib.crc32(prefix) ^ _FINGERPRINT_XOR).to_bytes(4, "big")


def _integrity(key: bytes, prefix: bytes) -> bytes:
    # RFC 5389 §15.4: the HMAC covers the message up to MESSAGE-INTEGRITY, with the length
    # field rewritten to end just after it, so a FINGERPRINT added later does not disturb it.
    length = len(prefix) - HEADER_SIZE + 4 + _INTEGRITY_SIZE
    signed = prefix[:2] + length.to_bytes(2, "big") + prefix[4:]
    return hmac.new(key, signed, hashlib.sha1).digest()


def _attribute_offset(raw: bytes, wanted: int) -> int | None:
    # Only ever walks what parse() accepted, so the lengths are known to be sound.
    offset = HEADER_SIZE
    while offset + 4 <= len(raw):
        attr_type, attr_len = struct.unpack_from("!HH", raw, offset)
        if attr_type == wanted:
            return offset
        offset += 4 + _padded(attr_len)
    return None


def _check_value(attr_type: int, value: bytes, transaction_id: bytes) -> None:
    if attr_type in _PLAIN_ADDRESS_TYPES:
        decode_address(value)
    elif attr_type == XOR_MAPPED_ADDRESS:
        decode_xor_address(value, transaction_id)
    elif attr_type == ERROR_CODE:
        _decode_error_code(value)
    elif attr_type == CHANGE_REQUEST:
        decode_change_request(value)
    elif attr_type == RESPONSE_PORT:
        decode_response_port(value)
    elif attr_type == USERNAME:
        _decode_username(value)


def _check_address_shape(value: bytes) -> tuple[int, int]:
    if len(value) < 4:
        raise ParseError(f"address attribute of {len(value)} bytes is too short")
    _, family, port = struct.unpack_from("!BBH", value)
    expected = {_FAMILY_IPV4: 8, _FAMILY_IPV6: 20}.get(family)
    if expected is None:
        raise ParseError(f"bad address family 0x{family:02x}")
    if len(value) != expected:
        raise ParseError(f"address attribute of {len(value)} bytes for family {family}")
    return family, port


def _address_text(family: int, packed: bytes) -> str:
    if family == _FAMILY_IPV4:
        return str(ipaddress.IPv4Address(packed))
    return str(ipaddress.IPv6Address(packed))


def _pack_address(address: Address) -> tuple[int, int, bytes]:
    host, port = address
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port {port} is outside 0-65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise LocalProtocolError(f"{host!r} is not an IP address") from exc
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return family, port, ip.packed


def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=False))


def _decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise ParseError(f"ERROR-CODE of {len(value)} bytes is too short")
    hundreds = value[2] & 0x07
    number = value[3]
    if not 3 <= hundreds <= 6 or number > 99:
        raise ParseError(f"ERROR-CODE class {hundreds} number {number} is out of range")
    return hundreds * 100 + number, value[4:].decode("utf-8", "replace")


def _decode_username(value: bytes) -> str:
    # Strict, unlike SOFTWARE: a username selects a key, so two spellings must not collide.
    if len(value) >= _MAX_USERNAME:
        raise ParseError(f"USERNAME of {len(value)} bytes exceeds 512")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("USERNAME is not UTF-8") from exc


def _encode_username(username: str) -> bytes:
    value = _utf8(username, "USERNAME")
    if len(value) >= _MAX_USERNAME:
        raise LocalProtocolError(f"USERNAME of {len(value)} bytes exceeds 512")
    return value


def _encode_text(text: str, what: str) -> bytes:
    value = _utf8(text, what)
    if len(value) > _MAX_TEXT:
        raise LocalProtocolError(f"{what} of {len(value)} bytes exceeds {_MAX_TEXT}")
    return value


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{what} cannot be encoded as UTF-8") from exc
