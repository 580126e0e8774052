"""Where a webhook may go: the URL rule at registration, and the addresses it may reach.

Callers' services live on private networks, so a private address is allowed, but only one
the operator lists in `EDITHOOK_WEBHOOK_ALLOWED_HOSTS` (a name, a `*.suffix`, a CIDR);
anything else must be public (`app.urls.address_allowed`). Link-local and cloud-metadata
addresses are refused always. Outside development a URL must be https; in development
loopback is allowed too, so a caller can point an endpoint at its own machine.

The rule is applied twice: to the URL's text when it is registered (a 422 then), and to
every address its name resolves to when a delivery connects — the delivery connects to
one of those checked addresses, so a second DNS answer cannot send it elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import Unprocessable
from app.settings import Settings
from app.urls import (
    AllowedHosts,
    IPAddress,
    Unresolved,
    UrlRefused,
    WebUrl,
    address_allowed,
    check_url,
    is_loopback_address,
    is_loopback_host,
    never_allowed,
    parse_url,
    resolve,
)

URL_MAX = 2048


@dataclass(frozen=True)
class Rule:
    """What the operator allows: the listed private hosts, and whether this is development."""

    allowed: AllowedHosts
    development: bool

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.development else ("https",)

    def check(self, url: str) -> WebUrl:
        """`url` split and judged by its text; UrlRefused (a "must …" reason) if refused."""
        if len(url) > URL_MAX:
            raise UrlRefused(f"must be at most {URL_MAX} characters")
        target = parse_url(url, schemes=self.schemes)
        if target.scheme == "http" and not is_loopback_host(target.host):
            raise UrlRefused("must use https (plain http only to loopback in development)")
        if target.address is not None:
            if not self.address_ok(target.address, listed_name=False):
                raise UrlRefused(
                    f"must be publicly reachable or listed in EDITHOOK_WEBHOOK_ALLOWED_HOSTS "
                    f"(refused address {target.address})"
                )
        elif not self.allowed.name_allowed(target.host):
            # Not listed: the public rule for names (no private-use or single-label names).
            check_url(url, schemes=self.schemes, allow_loopback=self.development)
        return target

    def address_ok(self, address: IPAddress, *, listed_name: bool) -> bool:
        """May a delivery connect to `address` (reached through a listed name, or not)?"""
        if never_allowed(address):
            return False
        if listed_name or self.allowed.address_listed(address):
            return True
        return address_allowed(address, allow_loopback=self.development)

    async def addresses(self, url: str) -> tuple[WebUrl, list[IPAddress]]:
        """`url` checked again, and the addresses a delivery may connect to; UrlRefused if
        its name resolves to any address the rule refuses, or to none."""
        target = self.check(url)
        if target.address is not None:
            addresses = [target.address]
        else:
            try:
                addresses = await resolve(target.host, target.port)
            except Unresolved as exc:
                raise UrlRefused(f"must resolve ({exc})") from exc
            listed = self.allowed.name_allowed(target.host)
            refused = [a for a in addresses if not self.address_ok(a, listed_name=listed)]
            if refused:
                raise UrlRefused(f"must not resolve to a refused address ({refused[0]})")
        if target.scheme == "http" and not all(is_loopback_address(a) for a in addresses):
            raise UrlRefused("must use https (plain http only to loopback in development)")
        return target, addresses


def rule_of(settings: Settings) -> Rule:
    """The rule `settings` set: the allowed private hosts, and whether this is development."""
    return Rule(settings.webhook_hosts, settings.environment == "development")


def check_webhook_url(settings: Settings, url: str, *, field: str) -> str:
    """`url` if the rule admits it; else Unprocessable (422) naming `field` and the reason."""
    try:
        rule_of(settings).check(url)
    except UrlRefused as exc:
        raise Unprocessable(
            f"The URL is refused: it {exc}.",
            errors=[{"field": field, "message": str(exc), "code": "url_refused"}],
        ) from None
    return url
