"""Whether a callback URL's host is one EvoLink would call: public, not loopback or private.

EvoLink documents the rule as "no internal or private IPs (127.0.0.1, 10.x, 172.16-31.x,
192.168.x, etc.)". This is a fake provider's reading of it, compact on purpose: literal
addresses in any spelling a resolver accepts are judged with `ipaddress`, `localhost` names
are refused, and other names are not resolved (EvoLink's resolver is not ours to imitate).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# A name whose last label is a number is an IPv4 address to a resolver (`127.1`,
# `2130706433`, `0x7f000001`), or nothing.
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def host_is_public(url: str) -> bool:
    """False when `url`'s host is loopback, private or otherwise not publicly routable."""
    host = urlsplit(url).hostname
    if not host:
        return False
    # Full-width letters and a trailing dot name the same host to a resolver.
    host = unicodedata.normalize("NFKC", host).lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    address = _literal_address(host)
    if address is None:
        return _NUMBER_LABEL.fullmatch(host.rsplit(".", 1)[-1]) is None
    return _address_is_public(address)


def _literal_address(host: str) -> Address | None:
    """The address `host` spells, as an IP literal or an inet_aton form; None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMBER_LABEL.fullmatch(host.rsplit(".", 1)[-1]) is None:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # not an address, or a NUL in it
        return None


def _address_is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 (mapped, 6to4, NAT64) is judged as that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _address_is_public(embedded)
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )
