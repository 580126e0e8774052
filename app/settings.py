"""Configuration, read once from `EDITHOOK_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.urls import AllowedHosts, UrlRefused, is_loopback_host

EVOLINK_BASE_URL = "https://api.evolink.ai"
MIN_SECRET_LENGTH = 32
# Every value of .env.example carries one of these, or a host of the reserved example
# domains, so that an unedited copy of it is refused rather than run with published secrets.
PLACEHOLDER_MARKERS = ("replace-with", "change-me", "your-")
PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net")


DEFAULT_WEBHOOK_SCHEDULE = "5s,5m,30m,2h,5h,10h,14h,20h,24h"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_schedule(raw: str) -> list[float]:
    """`5s,5m,2h` (units ms, s, m, h, d) as seconds; ValueError naming the bad entry."""
    delays: list[float] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        number = item.rstrip("mshd")
        unit = item[len(number) :] or "s"
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"{item!r} is not a duration like 5s, 5m or 2h") from None
        if unit not in _UNITS or not 0 <= value < float("inf"):
            raise ValueError(f"{item!r} is not a duration like 5s, 5m or 2h")
        delays.append(value * _UNITS[unit])
    return delays


class ConfigError(Exception):
    """The configuration cannot run the service; `problems` has one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def is_placeholder(value: str | None) -> bool:
    """True for a value that still holds one of .env.example's placeholder markers."""
    return bool(value) and any(marker in str(value).lower() for marker in PLACEHOLDER_MARKERS)


def is_placeholder_host(host: str | None) -> bool:
    """True for the reserved example domains and their subdomains."""
    host = (host or "").lower().rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in PLACEHOLDER_DOMAINS)


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse `client:key,client2:key2` into {key: client}; raises ValueError naming the fault."""
    keys: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        client, sep, key = item.partition(":")
        client, key = client.strip(), key.strip()
        if not sep or not client or not key:
            raise ValueError(f"entry {item.split(':')[0]!r}… is not of the form client:key")
        if key in keys:
            raise ValueError(f"two clients share one key ({keys[key]!r} and {client!r})")
        keys[key] = client
    return keys


def parse_admin_keys(raw: str) -> list[str]:
    """`key1,key2` as a list of keys; blanks between commas are ignored."""
    return [key.strip() for key in raw.split(",") if key.strip()]


class Settings(BaseSettings):
    """Everything edithook reads from its environment; see `.env.example`."""

    model_config = SettingsConfigDict(env_prefix="EDITHOOK_", extra="ignore")

    # "development" lets the provider and the public base URL be plain http on loopback hosts,
    # which is how `edithook dev` and the tests run against the simulator.
    environment: Literal["production", "development"] = "production"
    database_url: str = ""
    evolink_base_url: str = EVOLINK_BASE_URL
    evolink_api_key: SecretStr = SecretStr("")
    public_base_url: str = ""
    callback_secret: SecretStr = SecretStr("")
    # Seeded into the database at start; clients and keys are otherwise made by operators.
    api_keys: SecretStr = SecretStr("")
    # Operators' keys for the admin API (`/v1/admin/`), comma-separated; none: it is off.
    admin_keys: SecretStr = SecretStr("")

    host: str = "0.0.0.0"  # noqa: S104 - a container's service listens on all interfaces
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # One JSON object a line, or text for a person; unset, `serve` and `worker` log JSON and
    # `dev` text.
    log_format: Literal["json", "text"] | None = None
    # Per pool and process; api + worker open at most 8 * this + 7 connections (39 by default).
    db_pool_size: int = Field(default=4, ge=1, le=200)
    callback_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The largest body the client API reads; a task is a few kilobytes.
    rest_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    provider_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    provider_read_timeout_seconds: float = Field(default=30.0, gt=0)
    # A create the provider certainly did not act on is retried, with backoff, this many times.
    submit_attempts: int = Field(default=8, ge=1, le=30)
    # A create whose outcome is unknown fails the task after this long without any word.
    submit_unknown_timeout_seconds: float = Field(default=900.0, gt=0)
    # A task is polled once it is past max(floor, factor * the provider's estimate), then
    # again at that interval; at most `polls_per_minute` polls across all workers' runs.
    poll_factor: float = Field(default=2.0, ge=1.0)
    poll_floor_seconds: float = Field(default=60.0, ge=0)
    polls_per_minute: int = Field(default=120, ge=1)
    storage_url: str = "var/results"
    result_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    result_link_ttl_hours: float = Field(default=24.0, gt=0)
    event_retention_days: int = Field(default=30, ge=1)
    # Input images clients upload (`POST /v1/uploads`): the largest accepted, how long they
    # are kept, and how long a link EvoLink fetches one by stays valid after submission.
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    upload_retention_hours: float = Field(default=48.0, gt=0)
    input_url_ttl_seconds: int = Field(default=86_400, ge=60)
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    # Webhooks to callers: private hosts they may reach (names, `*.suffix`, CIDRs), the
    # delays between attempts (Standard Webhooks' schedule; each with jitter), the timeout.
    webhook_allowed_hosts: str = ""
    webhook_retry_schedule: str = DEFAULT_WEBHOOK_SCHEDULE
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=60)

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: str) -> str:
        try:
            AllowedHosts.parse(value)
        except UrlRefused as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def webhook_hosts(self) -> AllowedHosts:
        return AllowedHosts.parse(self.webhook_allowed_hosts)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)  # ValueError names the bad entry
        return value

    @property
    def webhook_schedule(self) -> list[float]:
        """The delays after each failed attempt, in seconds."""
        return parse_schedule(self.webhook_retry_schedule)

    # A comment on every idle `GET /v1/tasks/{id}/stream` this often, so proxies keep it open.
    stream_keepalive_seconds: float = Field(default=15.0, gt=0)

    @field_validator("evolink_base_url", "public_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @property
    def client_keys(self) -> dict[str, str]:
        """API key → client name."""
        return parse_api_keys(self.api_keys.get_secret_value())

    @property
    def operator_keys(self) -> list[str]:
        """The keys of EDITHOOK_ADMIN_KEYS."""
        return parse_admin_keys(self.admin_keys.get_secret_value())

    def problems(self) -> list[str]:
        """Every reason this configuration is unfit to serve production traffic."""
        found: list[str] = []
        if not self.database_url:
            found.append("EDITHOOK_DATABASE_URL is not set (postgresql://user:pass@host/db)")
        elif urlsplit(self.database_url).scheme.split("+")[0] not in ("postgresql", "postgres"):
            found.append("EDITHOOK_DATABASE_URL must be a postgresql:// URL")
        elif is_placeholder(urlsplit(self.database_url).password):
            found.append(
                "EDITHOOK_DATABASE_URL has the placeholder password of .env.example; "
                "set POSTGRES_PASSWORD (or the URL's password) to a real one"
            )
        if not self.evolink_api_key.get_secret_value():
            found.append("EDITHOOK_EVOLINK_API_KEY is not set")
        elif is_placeholder(self.evolink_api_key.get_secret_value()):
            found.append(
                "EDITHOOK_EVOLINK_API_KEY is the placeholder of .env.example; "
                "set the API key of your EvoLink account"
            )
        dev = self.environment == "development"
        found += _url_problems("EDITHOOK_EVOLINK_BASE_URL", self.evolink_base_url, dev)
        public = _url_problems("EDITHOOK_PUBLIC_BASE_URL", self.public_base_url, dev)
        if not public and is_placeholder_host(urlsplit(self.public_base_url).hostname):
            public = [
                "EDITHOOK_PUBLIC_BASE_URL is the example host of .env.example; "
                "set the https URL where EvoLink reaches this service"
            ]
        found += public
        secret = self.callback_secret.get_secret_value()
        if not secret:
            found.append("EDITHOOK_CALLBACK_SECRET is not set (use 32+ random characters)")
        elif is_placeholder(secret):
            found.append(
                "EDITHOOK_CALLBACK_SECRET is the placeholder of .env.example; set 32+ random "
                "characters, e.g. from python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        elif len(secret) < MIN_SECRET_LENGTH:
            found.append(
                f"EDITHOOK_CALLBACK_SECRET is too short ({len(secret)} characters; "
                f"use at least {MIN_SECRET_LENGTH} random characters)"
            )
        admin = self.admin_keys.get_secret_value().strip()
        if not self.api_keys.get_secret_value().strip():
            if not admin:
                found.append(
                    "EDITHOOK_API_KEYS is not set (client:key,client2:key2), nor is "
                    "EDITHOOK_ADMIN_KEYS to make clients and keys with"
                )
        else:
            try:
                keys = self.client_keys
            except ValueError as exc:
                found.append(f"EDITHOOK_API_KEYS is malformed: {exc}")
            else:
                examples = sorted(client for key, client in keys.items() if is_placeholder(key))
                short = sorted(client for key, client in keys.items() if len(key) < 16)
                if examples:
                    found.append(
                        "EDITHOOK_API_KEYS has the placeholder keys of .env.example for: "
                        + ", ".join(examples)
                        + "; give each client a long random key"
                    )
                elif short:
                    found.append(
                        "EDITHOOK_API_KEYS has keys shorter than 16 characters for: "
                        + ", ".join(short)
                    )
        found += self._admin_key_problems()
        return found

    def _admin_key_problems(self) -> list[str]:
        admin = self.operator_keys
        if any(is_placeholder(key) for key in admin):
            return ["EDITHOOK_ADMIN_KEYS has the placeholder of .env.example; use long random keys"]
        if any(len(key) < MIN_SECRET_LENGTH for key in admin):
            return [
                f"EDITHOOK_ADMIN_KEYS has keys shorter than {MIN_SECRET_LENGTH} characters; "
                "use long random keys"
            ]
        try:
            client_keys = self.client_keys
        except ValueError:
            return []  # reported above
        if set(admin) & set(client_keys):
            return ["EDITHOOK_ADMIN_KEYS shares a key with EDITHOOK_API_KEYS; use separate keys"]
        return []

    def check(self) -> None:
        """Raise ConfigError listing every problem, if there is any."""
        found = self.problems()
        if found:
            raise ConfigError(found)


def _url_problems(name: str, url: str, development: bool) -> list[str]:
    if not url:
        return [f"{name} is not set"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{name} must be an absolute https:// URL, got {url!r}"]
    if parts.scheme != "https" and not (development and is_loopback_host(parts.hostname)):
        return [
            f"{name} must use https (plain http only for loopback hosts "
            "with EDITHOOK_ENVIRONMENT=development)"
        ]
    if parts.query or parts.fragment:
        return [f"{name} must not carry a query or fragment"]
    return []


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
