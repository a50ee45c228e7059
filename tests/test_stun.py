"""The STUN codec against RFC 5769's vectors, hand-made malformed messages, and hypothesis."""

from __future__ import annotations

import ipaddress
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.stun import (
    BINDING,
    CHANGE_REQUEST,
    ERROR_CODE,
    FINGERPRINT,
    MAPPED_ADDRESS,
    MESSAGE_INTEGRITY,
    OTHER_ADDRESS,
    PADDING,
    RESPONSE_ORIGIN,
    RESPONSE_PORT,
    SOFTWARE,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    ChangeRequest,
    StunClass,
    StunMessage,
    binding_error,
    binding_request,
    binding_success,
    encode,
    encode_address,
    encode_change_request,
    encode_response_port,
    encode_xor_address,
    is_stun,
    parse,
)

# RFC 5769 §2: every vector shares this transaction ID and short-term password.
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# §2.1 Sample Request: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME (padded with spaces),
# MESSAGE-INTEGRITY, FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)

# §2.2 Sample IPv4 Response: SOFTWARE, XOR-MAPPED-ADDRESS 192.0.2.1:32853, MI, FINGERPRINT.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)

# §2.3 Sample IPv6 Response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

VECTORS = [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE]
VECTOR_IDS = ["request", "ipv4-response", "ipv6-response"]
IPV6_MAPPED = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def tlv(attr_type: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) % 4)


def message(body: bytes, msg_type: int = 0x0101, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack("!HHI", msg_type, size, 0x2112A442) + TID + body


def with_fingerprint(body: bytes, msg_type: int = 0x0101) -> bytes:
    head = message(body, msg_type, len(body) + 8)
    crc = zlib.crc32(head) ^ 0x5354554E
    return head + tlv(FINGERPRINT, crc.to_bytes(4, "big"))


# RFC 5769 vectors


def test_rfc5769_sample_request() -> None:
    msg = parse(RFC5769_REQUEST)
    assert msg.msg_class is StunClass.REQUEST
    assert msg.method == BINDING
    assert msg.transaction_id == TID
    assert [t for t, _ in msg.attributes] == [
        SOFTWARE,
        0x0024,  # PRIORITY (RFC 8445)
        0x8029,  # ICE-CONTROLLED (RFC 8445)
        USERNAME,
        MESSAGE_INTEGRITY,
        FINGERPRINT,
    ]
    assert msg.software == "STUN test client"
    assert msg.username == "evtj:h6vY"
    assert msg.get(0x0024) == bytes.fromhex("6e0001ff")
    assert msg.integrity_ok(PASSWORD)
    assert not msg.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBu")
    assert msg.fingerprint_ok
    assert msg.xor_mapped_address is None
    assert msg.raw == RFC5769_REQUEST


def test_rfc5769_ipv4_response() -> None:
    msg = parse(RFC5769_IPV4_RESPONSE)
    assert msg.msg_class is StunClass.SUCCESS
    assert msg.method == BINDING
    assert msg.software == "test vector"
    assert msg.xor_mapped_address == ("192.0.2.1", 32853)
    assert msg.mapped_address is None
    assert msg.error_code is None
    assert msg.integrity_ok(PASSWORD)
    assert msg.fingerprint_ok


def test_rfc5769_ipv6_response() -> None:
    msg = parse(RFC5769_IPV6_RESPONSE)
    assert msg.msg_class is StunClass.SUCCESS
    assert msg.xor_mapped_address == IPV6_MAPPED
    assert msg.integrity_ok(PASSWORD)
    assert msg.fingerprint_ok


@pytest.mark.parametrize(
    ("mapped", "wire"),
    [
        (("192.0.2.1", 32853), "0001a147e112a643"),
        (IPV6_MAPPED, "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"),
    ],
)
def test_xor_mapped_address_encodes_as_in_rfc5769(mapped: tuple[str, int], wire: str) -> None:
    assert encode_xor_address(mapped, TID) == bytes.fromhex(wire)


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_our_response_to_the_vector_request_verifies(vector: bytes) -> None:
    # Same content as the RFC 5769 responses; only padding bytes (zeros here, spaces there)
    # and attribute order differ, so the digests differ but must verify.
    mapped = parse(vector).xor_mapped_address or ("192.0.2.1", 32853)
    data = binding_success(TID, mapped, software="test vector", integrity_key=PASSWORD)
    msg = parse(data)
    assert msg.xor_mapped_address == mapped
    assert msg.software == "test vector"
    assert msg.integrity_ok(PASSWORD)
    assert msg.fingerprint_ok


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_every_single_byte_corruption_is_caught(vector: bytes) -> None:
    # CRC-32 catches every single-bit error, so FINGERPRINT (or an earlier check) fires,
    # except when the flip hits FINGERPRINT's own type: it then reads as an unknown
    # attribute, and the message merely stops claiming a fingerprint.
    fingerprint_type = range(len(vector) - 8, len(vector) - 6)
    for index in range(len(vector)):
        corrupt = bytearray(vector)
        corrupt[index] ^= 0x01
        if index in fingerprint_type:
            assert not parse(bytes(corrupt)).fingerprint_ok
            continue
        with pytest.raises(ParseError):
            parse(bytes(corrupt))


def test_tampering_breaks_message_integrity() -> None:
    # No FINGERPRINT, so the HMAC alone has to notice the change.
    signed = binding_request(TID, "x", False, username="alice", integrity_key=b"k")
    assert parse(signed).integrity_ok(b"k")
    assert not parse(signed).integrity_ok(b"K")
    tampered = signed.replace(b"x", b"y", 1)
    assert parse(tampered).software == "y"
    assert not parse(tampered).integrity_ok(b"k")


# Malformed input: each reason RFC 5389 gives to reject a message


XMA_V4 = tlv(XOR_MAPPED_ADDRESS, bytes.fromhex("0001a147e112a643"))

MALFORMED = {
    "empty": b"",
    "shorter than the header": message(b"")[:19],
    "leading bits set": message(b"", msg_type=0x4101),
    "RFC 3489, no cookie": struct.pack("!HHI", 0x0101, 0, 0) + TID,
    "length not a multiple of 4": message(b"\x00\x00", length=2),
    "length field too long": message(XMA_V4, length=len(XMA_V4) + 4),
    "length field too short": message(XMA_V4, length=len(XMA_V4) - 4),
    "attribute runs past the end": message(struct.pack("!HH", SOFTWARE, 9) + b"abcd"),
    "attribute missing its padding": message(XMA_V4 + struct.pack("!HH", SOFTWARE, 1)),
    "bad fingerprint": message(tlv(FINGERPRINT, b"\x00\x00\x00\x00")),
    "fingerprint of 8 bytes": message(tlv(FINGERPRINT, bytes(8))),
    "fingerprint not last": message(tlv(FINGERPRINT, bytes(4)) + tlv(SOFTWARE, b"late")),
    "integrity of 16 bytes": message(tlv(MESSAGE_INTEGRITY, bytes(16))),
    "address family 3": message(tlv(XOR_MAPPED_ADDRESS, bytes.fromhex("0003a147e112a643"))),
    "IPv4 family, IPv6 length": message(tlv(MAPPED_ADDRESS, b"\x00\x01\x13\xc4" + bytes(16))),
    "IPv6 family, IPv4 length": message(tlv(OTHER_ADDRESS, b"\x00\x02\x13\xc4" + bytes(4))),
    "address too short": message(tlv(RESPONSE_ORIGIN, b"\x00\x01")),
    "error class 7": message(tlv(ERROR_CODE, b"\x00\x00\x07\x00Bad")),
    "error number 100": message(tlv(ERROR_CODE, b"\x00\x00\x04\x64Bad")),
    "error code too short": message(tlv(ERROR_CODE, b"\x00\x00\x04")),
    "change request of 2 bytes": message(tlv(CHANGE_REQUEST, b"\x00\x06")),
    "response port of 3 bytes": message(tlv(RESPONSE_PORT, b"\x13\xc4\x00")),
    "username not UTF-8": message(tlv(USERNAME, b"\xff\xfe")),
    "username of 513 bytes": message(tlv(USERNAME, b"u" * 513)),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert info.value.status == 400


def test_fingerprint_not_last_is_the_reason() -> None:
    with pytest.raises(ParseError, match="not the last"):
        parse(MALFORMED["fingerprint not last"])


def test_oversized_datagram_is_413() -> None:
    data = binding_success(TID, ("192.0.2.1", 5060), software="x" * 700)
    assert len(parse(data, max_size=len(data)).attributes) == 3
    with pytest.raises(ParseError) as info:
        parse(data, max_size=len(data) - 1)
    assert info.value.status == 413


def test_attributes_after_message_integrity_are_ignored() -> None:
    # RFC 5389 §15.4: nothing after MESSAGE-INTEGRITY but FINGERPRINT counts.
    signed = encode(
        StunClass.SUCCESS, BINDING, TID, [(XOR_MAPPED_ADDRESS, XMA_V4[4:])], integrity_key=b"k"
    )
    body = signed[20:] + tlv(SOFTWARE, b"smuggled") + tlv(MAPPED_ADDRESS, b"\x00\x07\x00\x00")
    msg = parse(with_fingerprint(body))
    assert [t for t, _ in msg.attributes] == [XOR_MAPPED_ADDRESS, MESSAGE_INTEGRITY, FINGERPRINT]
    assert msg.software is None
    assert msg.integrity_ok(b"k")
    assert msg.fingerprint_ok


def test_padding_bytes_may_be_anything() -> None:
    msg = parse(message(tlv(SOFTWARE, b"abc", pad=b"\xff")))
    assert msg.software == "abc"


def test_unknown_and_repeated_attributes_are_kept_in_order() -> None:
    body = tlv(0x7FFF, b"req") + tlv(0xC001, b"opt") + tlv(SOFTWARE, b"one") + tlv(SOFTWARE, b"two")
    msg = parse(message(body))
    assert msg.attributes == (
        (0x7FFF, b"req"),
        (0xC001, b"opt"),
        (SOFTWARE, b"one"),
        (SOFTWARE, b"two"),
    )
    assert msg.software == "one"
    assert not msg.fingerprint_ok
    assert not msg.integrity_ok(b"k")


def test_software_with_bad_utf8_is_decoded_leniently() -> None:
    assert parse(message(tlv(SOFTWARE, b"v\xff1"))).software == "v\ufffd1"


# Builders


def test_binding_request_defaults() -> None:
    data = binding_request(TID)
    assert data[:2] == b"\x00\x01"
    msg = parse(data)
    assert (msg.msg_class, msg.method, msg.transaction_id) == (StunClass.REQUEST, BINDING, TID)
    assert [t for t, _ in msg.attributes] == [FINGERPRINT]
    assert msg.fingerprint_ok
    assert binding_request(TID, fingerprint=False) == bytes.fromhex("000100002112a442") + TID


def test_binding_success_with_mapped_address_for_old_clients() -> None:
    msg = parse(binding_success(TID, ("198.51.100.7", 5060), include_mapped_address=True))
    assert msg.msg_class is StunClass.SUCCESS
    assert msg.xor_mapped_address == ("198.51.100.7", 5060)
    assert msg.mapped_address == ("198.51.100.7", 5060)
    assert msg.get(MAPPED_ADDRESS) == encode_address(("198.51.100.7", 5060))


def test_binding_error() -> None:
    data = binding_error(TID, 420, "Unknown Attribute", software="sipalive")
    assert data[:2] == b"\x01\x11"
    msg = parse(data)
    assert msg.msg_class is StunClass.ERROR
    assert msg.error_code == (420, "Unknown Attribute")
    assert msg.software == "sipalive"
    assert msg.fingerprint_ok


def test_rfc5780_attributes() -> None:
    request = parse(
        binding_request(
            TID,
            attributes=[
                (CHANGE_REQUEST, encode_change_request(change_ip=True, change_port=False)),
                (RESPONSE_PORT, encode_response_port(40000)),
                (PADDING, bytes(37)),
            ],
        )
    )
    assert request.change_request == ChangeRequest(change_ip=True, change_port=False)
    assert request.get(CHANGE_REQUEST) == b"\x00\x00\x00\x04"
    assert request.response_port == 40000
    assert request.get(PADDING) == bytes(37)
    response = parse(
        binding_success(
            TID,
            ("192.0.2.1", 32853),
            attributes=[
                (RESPONSE_ORIGIN, encode_address(("203.0.113.1", 3478))),
                (OTHER_ADDRESS, encode_address(("2001:db8::2", 3479))),
            ],
        )
    )
    assert response.response_origin == ("203.0.113.1", 3478)
    assert response.other_address == ("2001:db8::2", 3479)
    assert response.change_request is None
    assert response.response_port is None


def test_two_byte_response_port_is_accepted() -> None:
    assert parse(message(tlv(RESPONSE_PORT, b"\x13\xc4"))).response_port == 5060


@pytest.mark.parametrize(
    "build",
    [
        lambda: binding_request(b"short"),
        lambda: encode(StunClass.REQUEST, 0x1000, TID),
        lambda: encode(StunClass.REQUEST, BINDING, TID, [(FINGERPRINT, bytes(4))]),
        lambda: encode(StunClass.REQUEST, BINDING, TID, [(PADDING, bytes(65536))]),
        lambda: encode(StunClass.REQUEST, BINDING, TID, [(PADDING, bytes(40000))] * 2),
        lambda: binding_request(TID, integrity_key=b"k", attributes=[(PADDING, bytes(65508))]),
        lambda: binding_success(TID, ("192.0.2.1", 65536)),
        lambda: binding_success(TID, ("sip.example.com", 5060)),
        lambda: binding_error(TID, 299, "Too low"),
        lambda: binding_error(TID, 700, "Too high"),
        lambda: binding_request(TID, software="x" * 764),
        lambda: binding_request(TID, software="\ud800"),
        lambda: binding_request(TID, username="u" * 513),
        lambda: encode_response_port(-1),
        lambda: encode_xor_address(("192.0.2.1", 1), b"short"),
    ],
)
def test_builders_refuse_what_cannot_be_encoded(build: Callable[[], bytes]) -> None:
    with pytest.raises(LocalProtocolError):
        build()


# Demultiplexing STUN from SIP on one UDP port (RFC 5626 §4.4.2, RFC 7983)


SIP_OPTIONS = (
    b"OPTIONS sip:alice@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    "data", [*VECTORS, binding_request(TID), binding_request(TID, fingerprint=False)]
)
def test_is_stun_accepts_stun(data: bytes) -> None:
    assert is_stun(data)


@pytest.mark.parametrize(
    "data",
    [
        SIP_OPTIONS,
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\r\n\r\n",
        b"\r\n",
        b"",
        b"\r\n\r\n" * 5,  # 20 bytes of CRLFs: no magic cookie
        struct.pack("!HHI", 0x0001, 0, 0) + TID,  # RFC 3489
        RFC5769_REQUEST[:-4],  # length field no longer matches
        RFC5769_REQUEST + b"\x00\x00\x00\x00",
        b"\x40" + RFC5769_REQUEST[1:],
    ],
)
def test_is_stun_rejects_sip_and_keepalives(data: bytes) -> None:
    assert not is_stun(data)


# Properties


ip_text = st.ip_addresses().map(str)
ports = st.integers(0, 65535)
tids = st.binary(min_size=12, max_size=12)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=127)


@given(
    tid=tids,
    host=ip_text,
    port=ports,
    software=st.none() | texts,
    fingerprint=st.booleans(),
    key=st.none() | st.binary(min_size=1, max_size=64),
    legacy=st.booleans(),
)
def test_binding_success_round_trip(
    *,
    tid: bytes,
    host: str,
    port: int,
    software: str | None,
    fingerprint: bool,
    key: bytes | None,
    legacy: bool,
) -> None:
    data = binding_success(
        tid,
        (host, port),
        software,
        fingerprint,
        integrity_key=key,
        include_mapped_address=legacy,
    )
    assert is_stun(data)
    msg = parse(data)
    assert (msg.msg_class, msg.method, msg.transaction_id) == (StunClass.SUCCESS, BINDING, tid)
    assert msg.xor_mapped_address == (host, port)
    assert msg.mapped_address == ((host, port) if legacy else None)
    assert msg.software == software
    assert msg.fingerprint_ok is fingerprint
    assert msg.integrity_ok(key) if key is not None else msg.get(MESSAGE_INTEGRITY) is None


@given(tid=tids, software=st.none() | texts, username=st.none() | texts, fingerprint=st.booleans())
def test_binding_request_round_trip(
    tid: bytes, software: str | None, username: str | None, fingerprint: bool
) -> None:
    msg = parse(binding_request(tid, software, fingerprint, username=username))
    assert (msg.msg_class, msg.transaction_id) == (StunClass.REQUEST, tid)
    assert (msg.software, msg.username, msg.fingerprint_ok) == (software, username, fingerprint)


@given(tid=tids, code=st.integers(300, 699), reason=texts)
def test_binding_error_round_trip(tid: bytes, code: int, reason: str) -> None:
    msg = parse(binding_error(tid, code, reason))
    assert msg.msg_class is StunClass.ERROR
    assert msg.error_code == (code, reason)


@given(msg_class=st.sampled_from(StunClass), method=st.integers(0, 0xFFF), tid=tids)
def test_message_type_round_trip(msg_class: StunClass, method: int, tid: bytes) -> None:
    msg = parse(encode(msg_class, method, tid))
    assert msg == StunMessage(msg_class, method, tid)


def test_ipv4_mapped_ipv6_stays_ipv6() -> None:
    host = str(ipaddress.IPv6Address("::ffff:192.0.2.1"))
    assert parse(binding_success(TID, (host, 1))).xor_mapped_address == (host, 1)


def _parse_or_parse_error(data: bytes) -> None:
    try:
        msg = parse(data)
    except ParseError:
        return
    # Whatever parses must also pass the demultiplexing test, and its helpers must work.
    assert is_stun(data)
    assert msg.error_code is None or 300 <= msg.error_code[0] <= 699
    _ = (msg.xor_mapped_address, msg.mapped_address, msg.response_origin, msg.other_address)
    _ = (msg.change_request, msg.response_port, msg.username, msg.software, msg.fingerprint_ok)
    msg.integrity_ok(b"key")


@given(st.binary(max_size=256))
@example(b"")
@example(b"\r\n\r\n")
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_parse_error(data)


@st.composite
def stun_shaped(draw: st.DrawFn) -> bytes:
    """A valid header over random attributes, so the fuzzing gets past the header checks."""
    attrs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        MAPPED_ADDRESS,
                        XOR_MAPPED_ADDRESS,
                        RESPONSE_ORIGIN,
                        OTHER_ADDRESS,
                        ERROR_CODE,
                        CHANGE_REQUEST,
                        RESPONSE_PORT,
                        USERNAME,
                        SOFTWARE,
                        MESSAGE_INTEGRITY,
                        FINGERPRINT,
                        PADDING,
                        0x7FFF,
                    ]
                ),
                st.binary(max_size=24),
            ),
            max_size=6,
        )
    )
    body = b"".join(tlv(t, v) for t, v in attrs)
    msg_type = draw(st.integers(0, 0x3FFF))
    if draw(st.booleans()):
        return with_fingerprint(body, msg_type)
    return message(body, msg_type)


@given(stun_shaped())
def test_fuzz_stun_shaped(data: bytes) -> None:
    _parse_or_parse_error(data)


@given(st.sampled_from(VECTORS), st.integers(0, 1000), st.binary(min_size=1, max_size=4))
def test_fuzz_mutated_vectors(vector: bytes, where: int, patch: bytes) -> None:
    index = where % len(vector)
    _parse_or_parse_error(vector[:index] + patch + vector[index + len(patch) :])
