"""The URL rule on its own: hosts read as a resolver reads them, then judged public or not."""

from __future__ import annotations

import ipaddress

import pytest

from app.urls import (
    UrlRefused,
    WebUrl,
    address_allowed,
    check_url,
    is_loopback_host,
    normalise_host,
)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),  # noqa: S104 - an address read, not bound
        ("10.1", "10.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0x8.0x8.0x8.0x8", "8.8.8.8"),
        ("00000000010.0.0.1", "8.0.0.1"),
        ("\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ],
)
def test_numeric_hosts_are_read_in_every_inet_aton_form(host: str, address: str) -> None:
    """Decimal, octal, hex, 1-4 parts, full-width digits, a trailing dot: all one address."""
    assert normalise_host(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("localhost.", "localhost"),
        ("\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", "localhost"),
        ("localhost\u3002", "localhost"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("my_bucket.example.com", "my_bucket.example.com"),
        ("127.0.0.1.example.com", "127.0.0.1.example.com"),
    ],
)
def test_names_are_mapped_as_idna_and_lose_their_trailing_dot(host: str, name: str) -> None:
    """UTS #46 maps full-width letters and stops and upper case; a final dot is dropped."""
    assert normalise_host(host) == name


@pytest.mark.parametrize(
    "host",
    [
        "",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.256.1.1",
        "1.2.65536",
        "4294967296",
        "08.1.1.1",
        "0x",
        "0x.1",
        "foo.123",
        "a..b",
        ".a.example",
        "a.example..",
        "xn--zz.example",
        "a%2eexample",
        "exa mple.com",
        "a!b.example",
        "[127.0.0.1]",
        "[fe80::1%eth0]",
        "[v1.x]",
        "x" * 64 + ".example",
    ],
)
def test_hosts_a_resolver_would_read_otherwise_are_refused(host: str) -> None:
    """Malformed numbers, empty labels, bad IDNA, percent-encoding and zones are refused."""
    with pytest.raises(UrlRefused):
        normalise_host(host)


REFUSED = [
    "https://127.1/",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0177.0.0.1/",
    "https://0/",
    "https://10.1/",
    "https://localhost./",
    "https://127.0.0.1./",
    "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",
    "https://[64:ff9b::7f00:1]/",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[64:ff9b:1::808:808]/",
    "https://[2002:7f00:1::]/",
    "https://[2002:c0a8:101::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
    "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
    "https://[fe80::1]/",
    "https://[fd00::1]/",
    "https://a.example:0/",
    "https://a.example:65536/",
    "https://a.example:abc/",
    "https://a.example:/",
    "https://a.example:+443/",
    "https://a.example:\u0664\u0664\u0663/",
    "https://a.exa\nmple/x.png",
    "https://a.example/x\r\n.png",
    "https://a.example/\tx.png",
    "\thttps://a.example/x.png",
    " https://a.example/x.png",
    "https://a.example/x y.png",
    "https://a.example/\u3000.png",
    "https://a.example/\x00.png",
    "https://a.example/\udfff.png",
    "https://a.example/\x85.png",
    "https://a.example\\@localhost/x.png",
    "https://user@a.example/",
    "https://@a.example/",
    "https://u:p@a.example/",
    "http://a.example/",
    "ftp://a.example/",
    "https:a.example/",
    "https:///a.example/",
    "//a.example/",
    "https://[::1/",
    "https://[::1]x/",
    "https://intranet/",
    "https://metadata.google.internal/",
    "https://printer.local/",
    "https://router.home.arpa/",
    "https://app.localhost/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_disguised_private_and_malformed_urls_are_refused(url: str) -> None:
    """Loopback, private and special hosts in any spelling, and ambiguous URLs, are refused."""
    with pytest.raises(UrlRefused):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://example.com/", "example.com", 443),
        ("https://EXAMPLE.com.:8443/x?y#z", "example.com", 8443),
        ("https://a.example:00443/", "a.example", 443),
        ("https://8.8.8.8/", "8.8.8.8", 443),
        ("https://134744072/", "8.8.8.8", 443),
        ("https://[2606:4700::1111]/", "2606:4700::1111", 443),
        ("https://[::ffff:8.8.8.8]/", "::ffff:808:808", 443),
        ("https://[64:ff9b::8.8.8.8]/", "64:ff9b::808:808", 443),
        ("https://[2002:808:808::1]/", "2002:808:808::1", 443),
        ("https://b\u00fccher.example/bild.png", "xn--bcher-kva.example", 443),
        ("https://\u4f8b\u3048.\u30c6\u30b9\u30c8/", "xn--r8jz45g.xn--zckzah", 443),
        ("https://cdn.example.com/in/%E2%9C%93.png", "cdn.example.com", 443),
        ("https://cdn.example.com/in/\u00e9t\u00e9.png", "cdn.example.com", 443),
    ],
)
def test_public_urls_pass_with_their_normalised_host(url: str, host: str, port: int) -> None:
    """Public names (IDNA too) and public addresses pass; the host comes back normalised."""
    target = check_url(url)
    assert (target.host, target.port) == (host, port)


def test_an_address_literal_is_given_as_the_address_to_connect_to() -> None:
    """The judged address is the one a connection uses, whatever the spelling."""
    assert check_url("https://0x8080808:8443/") == WebUrl(
        "https", "8.8.8.8", ipaddress.IPv4Address("8.8.8.8"), 8443
    )
    assert check_url("https://a.example/").address is None


@pytest.mark.parametrize(
    ("url", "authority"),
    [
        ("https://A.example/", "a.example"),
        ("https://a.example:443/", "a.example"),
        ("https://a.example:8443/", "a.example:8443"),
        ("http://localhost:80/", "localhost"),
        ("https://[2606:4700::1111]:8443/", "[2606:4700::1111]:8443"),
    ],
)
def test_the_authority_names_the_normalised_host_and_a_non_default_port(
    url: str, authority: str
) -> None:
    """`authority` is what a Host header carries for the checked URL."""
    target = check_url(url, schemes=("https", "http"), allow_loopback=True)
    assert target.authority == authority


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000/x", "http://127.1:8000/", "https://[::1]/", "https://LOCALHOST./"],
)
def test_loopback_passes_only_when_allowed(url: str) -> None:
    """`allow_loopback` admits loopback hosts, however spelt, and nothing else private."""
    with pytest.raises(UrlRefused):
        check_url(url, schemes=("https", "http"))
    assert check_url(url, schemes=("https", "http"), allow_loopback=True)
    with pytest.raises(UrlRefused):
        check_url("https://10.1/", allow_loopback=True)


def test_a_refusal_says_how_the_host_was_read() -> None:
    """The reason names the address a disguised host stands for."""
    with pytest.raises(UrlRefused, match=r"non-public address 127\.0\.0\.1"):
        check_url("https://0x7f000001/")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("127.0.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - an address judged, not bound
        ("0.1.2.3", False),
        ("169.254.1.1", False),
        ("100.100.100.100", False),
        ("192.0.0.9", False),
        ("198.18.0.1", False),
        ("192.0.2.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("239.1.1.1", False),
        ("::", False),
        ("::1", False),
        ("::127.0.0.1", False),
        ("100::1", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("fe80::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("3fff::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:0:7f00:1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::10.0.0.1", False),
        ("64:ff9b::127.0.0.1", False),
        ("64:ff9b::8.8.8.8", True),
        ("64:ff9b:1::8.8.8.8", False),
        ("2002:0a00:0001::1", False),
        ("2002:7f00:1::", False),
        ("2002:0808:0808::1", True),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),
    ],
)
def test_address_classification(address: str, allowed: bool) -> None:
    """Only globally routable addresses pass, including through IPv6 embeddings of IPv4."""
    assert address_allowed(ipaddress.ip_address(address)) is allowed


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses_pass_only_when_allowed(address: str) -> None:
    """`allow_loopback` admits loopback addresses and nothing else private."""
    assert not address_allowed(ipaddress.ip_address(address))
    assert address_allowed(ipaddress.ip_address(address), allow_loopback=True)
    assert not address_allowed(ipaddress.ip_address("10.0.0.1"), allow_loopback=True)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("127.0.0.1", True),
        ("127.1", True),
        ("0x7f000001", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", True),
        ("localhost.example.com", False),
        ("10.0.0.1", False),
        ("api.evolink.ai", False),
        ("", False),
        (None, False),
        ("a..b", False),
    ],
)
def test_loopback_hosts_are_recognised_in_any_spelling(host: str | None, loopback: bool) -> None:
    """Settings' loopback test reads hosts the same way as everything else."""
    assert is_loopback_host(host) is loopback
