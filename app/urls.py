"""URLs judged as a resolver reads them: the one rule for every URL edithook accepts or fetches.

A URL that a client gives us (`image_urls`) or that we fetch (result links and their
redirects) goes through `check_url`. It refuses what readers would split differently
(control characters, spaces, backslashes, credentials, a bad port), then normalises the
host the way a resolver and a browser read it — UTS #46 IDNA mapping (full-width letters,
ideographic full stops, upper case), one trailing dot dropped, and a name whose last label
is a number read as an IPv4 address in every inet_aton form (`127.1`, `2130706433`,
`0x7f000001`, `0177.0.0.1`) — and only then applies the public-address rule. Judging the
text as written would let `https://0x7f000001/` through as a "name" that every resolver
turns into 127.0.0.1.

Names are not resolved here: that is I/O, and for `image_urls` it is the provider's
resolver that counts. The result fetcher resolves a checked name itself and judges every
address with `address_allowed`, the same rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS: Final = {"https": 443, "http": 80}

# Not globally reachable (IANA special-purpose registries), written out rather than taken
# from `ipaddress.is_global`, whose tables differ between Python releases.
_IPV4_NOT_PUBLIC: Final = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; connecting to 0.0.0.0 reaches the local host
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, where cloud metadata services live
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.88.99.0/24",  # the retired 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_IPV4_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")
# Only global unicast space is public; everything outside it (ULA, link-local, multicast,
# the local-use NAT64 prefix 64:ff9b:1::/48, discard, IPv4-compatible ::/96) is refused.
_IPV6_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_IPV6_NOT_PUBLIC: Final = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) among them
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")

# Names that are loopback by definition (RFC 6761), and suffixes that name private networks
# (mDNS, RFC 6762; home networks, RFC 8375; `.internal`, reserved for private use).
_LOOPBACK_NAME: Final = "localhost"
_PRIVATE_SUFFIXES: Final = ("local", "internal", "home.arpa", "localdomain")

_LABEL: Final = re.compile(r"[a-z0-9_-]{1,63}")
# WHATWG's "ends in a number": such a host is an IPv4 address or nothing.
_NUMBER_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
# One inet_aton part: hex, octal or decimal; leading zeros are dropped so a long run of
# them cannot make a huge number, and the digit counts keep every value below 2**34.
_IPV4_PART: Final = re.compile(r"0x0*([0-9a-f]{1,8})|0+([0-7]{0,11})|([1-9][0-9]{0,9})")
_FORBIDDEN_IN_URL: Final = re.compile(r"[\x00-\x20\x7f-\x9f\\\s]")
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_PORT: Final = re.compile(r"0*[0-9]{1,5}")
_MAX_NAME: Final = 253


class UrlRefused(ValueError):
    """The URL is malformed or points where it may not; the message says why, as "must …"."""


@dataclass(frozen=True)
class WebUrl:
    """A checked URL's scheme, normalised host and port.

    `host` is a lower-case ASCII name without its trailing dot, or an IP address's canonical
    text; `address` is that address when the host is an IP literal (in any spelling).
    """

    scheme: str
    host: str
    address: IPAddress | None
    port: int

    @property
    def authority(self) -> str:
        """`host[:port]` for a `Host` header: the port only when it is not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS.get(self.scheme) else f"{host}:{self.port}"


def check_url(
    url: str, *, schemes: tuple[str, ...] = ("https",), allow_loopback: bool = False
) -> WebUrl:
    """`url` split, normalised and judged; UrlRefused unless it may be used.

    It must be absolute with one of `schemes`, carry no credentials, have a port of 1 to 65535
    if any (an empty port after `:` is refused), and a host that is public once normalised:
    an IP literal must pass `address_allowed`, and a name must not be `localhost` (unless
    `allow_loopback`), a private-use name or a single label.
    """
    target = parse_url(url, schemes=schemes)
    if target.address is not None:
        if not address_allowed(target.address, allow_loopback=allow_loopback):
            raise UrlRefused(f"must be publicly reachable (non-public address {target.address})")
        return target
    refusal = _name_refusal(target.host, allow_loopback=allow_loopback)
    if refusal:
        raise UrlRefused(f"must be publicly reachable (non-public {refusal} {target.host})")
    return target


def parse_url(url: str, *, schemes: tuple[str, ...] = ("https",)) -> WebUrl:
    """`url` split and its host normalised, without judging where it points."""
    _check_characters(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced bracket, or a netloc that NFKC would change
        raise UrlRefused("must be a valid URL") from None
    scheme_text = " or ".join(f"{scheme}://" for scheme in schemes)
    if parts.scheme not in schemes or not parts.netloc:
        raise UrlRefused(f"must be an absolute {scheme_text} URL")
    if "@" in parts.netloc:
        raise UrlRefused("must not carry credentials")
    host_text, port_text = _split_authority(parts.netloc)
    port = DEFAULT_PORTS.get(parts.scheme, 0)
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise UrlRefused("must have a port from 1 to 65535, in digits, if it has one")
        port = int(port_text)
    host = normalise_host(host_text)
    if isinstance(host, str):
        return WebUrl(parts.scheme, host, None, port)
    return WebUrl(parts.scheme, str(host), host, port)


def normalise_host(host: str) -> str | IPAddress:
    """The host as a resolver reads it: an IP address, or a lower-case ASCII name.

    IPv6 literals may come bracketed or bare (as `urlsplit(...).hostname` gives them).
    A name is IDNA-mapped (UTS #46), loses one trailing dot, and if its last label is a
    number it must be an IPv4 address in inet_aton form, which is returned as such.
    """
    if host.startswith("[") and host.endswith("]"):
        return _ipv6(host[1:-1])
    if ":" in host:
        return _ipv6(host)
    if not host:
        raise UrlRefused("must have a host")
    if "%" in host:
        raise UrlRefused("must not percent-encode its host")
    name = host
    if not name.isascii() or "xn--" in name.lower():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise UrlRefused(f"must have a valid international domain name ({exc})") from None
    name = name.lower()
    name = name.removesuffix(".")
    labels = name.split(".")
    if _NUMBER_LABEL.fullmatch(labels[-1]):
        return _ipv4(labels)
    if len(name) > _MAX_NAME or not all(_LABEL.fullmatch(label) for label in labels):
        raise UrlRefused("must have a valid host name (labels of letters, digits, - and _)")
    return name


def address_allowed(address: IPAddress, *, allow_loopback: bool = False) -> bool:
    """True when `address` is publicly routable (or loopback, if `allow_loopback`).

    Refused: private, loopback, link-local, shared (CGNAT), benchmarking, documentation,
    reserved, multicast and unspecified ranges; every IPv6 address outside global unicast
    2000::/3; and IPv6 forms that embed an IPv4 address (mapped, NAT64 64:ff9b::/96, 6to4)
    whose IPv4 address is refused. Teredo lies in 2001::/23 and is refused whole.
    """
    if isinstance(address, ipaddress.IPv4Address):
        if address in _IPV4_LOOPBACK:
            return allow_loopback
        return not any(address in network for network in _IPV4_NOT_PUBLIC)
    embedded = address.ipv4_mapped
    if embedded is None and address in _NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if embedded is not None:
        # A mapped or NAT64 address reaches exactly its IPv4 address (DNS64 hands out the
        # latter on IPv6-only networks), so that address decides.
        return address_allowed(embedded, allow_loopback=allow_loopback)
    if address in _SIX_TO_FOUR:
        # Reached through a relay to the embedded IPv4 address, never the local host.
        return address.sixtofour is not None and address_allowed(address.sixtofour)
    if address == ipaddress.IPv6Address("::1"):
        return allow_loopback
    if address not in _IPV6_GLOBAL_UNICAST:
        return False
    return not any(address in network for network in _IPV6_NOT_PUBLIC)


def is_loopback_address(address: IPAddress) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped in _IPV4_LOOPBACK
        return address == ipaddress.IPv6Address("::1")
    return address in _IPV4_LOOPBACK


def is_loopback_host(host: str | None) -> bool:
    """True for `localhost` (and `*.localhost`) and loopback IP literals, in any spelling."""
    if not host:
        return False
    try:
        normalised = normalise_host(host)
    except UrlRefused:
        return False
    if isinstance(normalised, str):
        return _is_loopback_name(normalised)
    return is_loopback_address(normalised)


def _check_characters(url: str) -> None:
    # urlsplit silently drops TAB, CR and LF and strips leading controls, and readers differ
    # on backslashes (WHATWG reads `\\` as `/`), so none of them may be in the text at all.
    if _SURROGATE.search(url):
        raise UrlRefused("must not contain unpaired surrogates")
    if _FORBIDDEN_IN_URL.search(url):
        raise UrlRefused("must not contain control characters, spaces or backslashes")


def _split_authority(netloc: str) -> tuple[str, str | None]:
    """(host, port text or None) of a netloc without userinfo."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UrlRefused("must close the [ of its IPv6 address")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UrlRefused("must have only a port after its IPv6 address")
        return host, (rest[1:] if rest else None)
    host, colon, port = netloc.partition(":")
    return host, (port if colon else None)


def _ipv6(text: str) -> ipaddress.IPv6Address:
    # A zone id (`fe80::1%eth0`) names an interface of the local host: never a public target.
    if "%" in text:
        raise UrlRefused("must not give an IPv6 zone")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise UrlRefused("must have a valid IPv6 address in brackets") from None


def _ipv4(labels: list[str]) -> ipaddress.IPv4Address:
    """The address of an inet_aton spelling: 1 to 4 parts, each decimal, octal (0…) or hex (0x…).

    The last part fills every byte the earlier parts leave (`127.1` is 127.0.0.1).
    """
    invalid = UrlRefused("must have a host that is a domain name or a valid IPv4 address")
    if len(labels) > 4:
        raise invalid
    numbers: list[int] = []
    for label in labels:
        match = _IPV4_PART.fullmatch(label)
        if not match:
            raise invalid
        hexadecimal, octal, decimal = match.groups()
        if hexadecimal is not None:
            numbers.append(int(hexadecimal or "0", 16))
        elif octal is not None:
            numbers.append(int(octal or "0", 8))
        else:
            numbers.append(int(decimal, 10))
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (4 - len(leading)):
        raise invalid
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _is_loopback_name(name: str) -> bool:
    return name == _LOOPBACK_NAME or name.endswith("." + _LOOPBACK_NAME)


def _name_refusal(name: str, *, allow_loopback: bool) -> str | None:
    """What makes `name` non-public, or None."""
    if _is_loopback_name(name):
        return None if allow_loopback else "loopback name"
    if any(name == suffix or name.endswith("." + suffix) for suffix in _PRIVATE_SUFFIXES):
        return "private-use name"
    if "." not in name:
        # A resolver completes a single label with its search domains: an internal host.
        return "single-label name"
    return None


# Always refused for callers' webhooks, whatever the operator allows: link-local (where
# cloud metadata services answer) and the metadata addresses outside it.
_NEVER: Final = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",
        "fe80::/10",
        "100.100.100.200/32",  # Alibaba Cloud's metadata service
        "fd00:ec2::254/128",  # AWS's metadata service over IPv6
    )
)
_METADATA_NAMES: Final = ("metadata.google.internal", "metadata.goog", "metadata")


def never_allowed(address: IPAddress) -> bool:
    """True for link-local and cloud-metadata addresses (IPv4-mapped forms included)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _NEVER)


@dataclass(frozen=True)
class AllowedHosts:
    """The private hosts an operator lets webhooks reach: names, `*.suffix` patterns, CIDRs."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> AllowedHosts:
        """`hooks.corp, *.svc.cluster.local, 10.20.0.0/16`; UrlRefused naming a bad entry."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            if "/" in item or _looks_like_address(item):
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise UrlRefused(f"{item!r} is not a valid CIDR or address") from None
                continue
            wildcard = item.startswith("*.")
            host = normalise_host(item[2:] if wildcard else item)
            if not isinstance(host, str):
                networks.append(ipaddress.ip_network(host))
            elif wildcard:
                suffixes.append(host)
            else:
                names.add(host)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def name_allowed(self, name: str) -> bool:
        if name in _METADATA_NAMES:
            return False
        return name in self.names or any(name.endswith("." + s) for s in self.suffixes)

    def address_listed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _looks_like_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Unresolved(Exception):
    """A name that gave no address: the resolver failed (often for a while) or found none."""


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The name's addresses, in resolver order, without duplicates; Unresolved if none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolved(f"could not resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        # The scope id of a link-local IPv6 address ("fe80::1%eth0") is not part of it.
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unresolved(f"{host} resolved to no address")
    return addresses


def pinned(
    url: httpx.URL, target: WebUrl, address: IPAddress
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """`url` aimed at the checked `address`, with the headers and extensions that keep its
    real name (Host, TLS server name): what was judged is what is connected to."""
    aimed = url.copy_with(host=str(address), port=target.port)
    if target.address is not None:
        return aimed, {}, {}
    headers = {
        "Host": target.authority,
        # The connection pool keys on the address: without this, a connection opened (and
        # certificate-checked) for one name could be reused for another name on that address.
        "Connection": "close",
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return aimed, headers, extensions
