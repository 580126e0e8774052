"""EDITHOOK_ADMIN_KEYS: what `serve` refuses, and that it may stand in for EDITHOOK_API_KEYS."""

from __future__ import annotations

import os

import pytest

from app.settings import Settings

LONG = "a" * 40


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDITHOOK_"):
            monkeypatch.delenv(name)


def _problems(**values: str) -> list[str]:
    base = {
        "database_url": "postgresql://u:p@db/x",
        "evolink_api_key": "sk-1",
        "public_base_url": "https://hooks.internal",
        "callback_secret": "s" * 40,
    }
    return Settings(**{**base, **values}).problems()  # type: ignore[arg-type]


def test_either_client_keys_or_admin_keys_will_do() -> None:
    assert any("EDITHOOK_API_KEYS is not set" in p for p in _problems())
    assert _problems(admin_keys=LONG) == []
    assert _problems(api_keys="svc:" + "k" * 20) == []


def test_admin_keys_are_long_real_and_not_a_clients() -> None:
    client = "svc:" + LONG
    assert any("shorter than 32" in p for p in _problems(api_keys=client, admin_keys="short"))
    placeholder = "replace-with-a-long-random-admin-key"
    assert any("placeholder" in p for p in _problems(api_keys=client, admin_keys=placeholder))
    assert any("shares a key" in p for p in _problems(api_keys=client, admin_keys=LONG))
    assert _problems(api_keys=client, admin_keys=f" {'b' * 40} , {'c' * 40} ") == []
    assert Settings(admin_keys=f"{'b' * 40},,{'c' * 40}").operator_keys == ["b" * 40, "c" * 40]
