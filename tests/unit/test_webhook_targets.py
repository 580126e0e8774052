"""The rule for where a webhook may go, judged on the URL's text (no I/O)."""

from __future__ import annotations

import ipaddress

import pytest

from app.urls import AllowedHosts, UrlRefused
from app.webhooks.targets import Rule

LISTED = AllowedHosts.parse("hooks.corp, *.svc.cluster.local, 10.20.0.0/16, 0.0.0.0/0")
PRODUCTION = Rule(AllowedHosts.parse("hooks.corp, *.svc.cluster.local, 10.20.0.0/16"), False)
DEVELOPMENT = Rule(AllowedHosts(), True)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/edithook",
        "https://hooks.corp/in",
        "https://orders.prod.svc.cluster.local:8443/hooks",
        "https://10.20.3.4/hook",
        "https://8.8.8.8/hook",
    ],
)
def test_public_hosts_and_listed_private_hosts_are_admitted(url: str) -> None:
    """Public names and addresses, and the operator's names, suffixes and CIDRs."""
    PRODUCTION.check(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/", "https://"),
        ("https://10.0.0.5/hook", "refused address"),
        ("https://192.168.1.1/", "refused address"),
        ("https://localhost/", "loopback"),
        ("https://127.0.0.1/", "refused address"),
        ("https://169.254.169.254/latest/meta-data", "refused address"),
        ("https://[fe80::1]/", "refused address"),
        ("https://intranet/", "single-label"),
        ("https://printer.local/", "private-use"),
        ("https://cluster.local/", "private-use"),
        ("https://user:pw@hooks.example.com/", "credentials"),
    ],
)
def test_private_unlisted_link_local_and_plain_http_urls_are_refused(url: str, reason: str) -> None:
    """Outside the list only public hosts, over https; the reason says what is wrong."""
    with pytest.raises(UrlRefused, match=reason):
        PRODUCTION.check(url)


def test_metadata_and_link_local_addresses_are_refused_even_when_a_cidr_covers_them() -> None:
    """0.0.0.0/0 listed still never reaches 169.254.0.0/16, fe80::/10 or metadata services."""
    rule = Rule(LISTED, False)
    for address in ("169.254.169.254", "fe80::1", "100.100.100.200", "fd00:ec2::254"):
        assert not rule.address_ok(ipaddress.ip_address(address), listed_name=True), address
    assert rule.address_ok(ipaddress.ip_address("10.1.2.3"), listed_name=False)
    assert not rule.allowed.name_allowed("metadata.google.internal")


def test_development_admits_plain_http_to_loopback_only() -> None:
    """A caller tries it on its own machine: http://127.0.0.1 and localhost, nothing else."""
    DEVELOPMENT.check("http://127.0.0.1:9000/hook")
    DEVELOPMENT.check("http://localhost:9000/hook")
    with pytest.raises(UrlRefused, match="https"):
        DEVELOPMENT.check("http://hooks.example.com/hook")
    with pytest.raises(UrlRefused):
        PRODUCTION.check("http://127.0.0.1:9000/hook")


def test_a_listed_name_may_resolve_to_private_addresses_an_unlisted_one_may_not() -> None:
    """At connect time the name decides whether its private addresses are allowed."""
    private = ipaddress.ip_address("10.9.9.9")
    assert PRODUCTION.address_ok(private, listed_name=True)
    assert not PRODUCTION.address_ok(private, listed_name=False)
    assert PRODUCTION.allowed.name_allowed("a.svc.cluster.local")
    assert not PRODUCTION.allowed.name_allowed("svc.cluster.local.evil.com")


def test_a_bad_allowed_hosts_entry_is_refused() -> None:
    """An unreadable CIDR names itself."""
    with pytest.raises(UrlRefused, match=r"10\.0\.0\.0/33"):
        AllowedHosts.parse("10.0.0.0/33")
