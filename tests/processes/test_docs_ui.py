"""/docs works without internet: Swagger UI's assets come from the service itself.

The browser test loads the page in a real headless Chromium (Debian's `chromium` package)
with every request to anywhere but the service refused.
"""

from __future__ import annotations

import os
import re
import shutil
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = os.environ.get("CI") == "true"


async def test_the_docs_page_references_only_the_services_own_assets(
    api: httpx.AsyncClient,
) -> None:
    """Every script, style and icon of /docs is a local path the service serves."""
    page = await api.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(asset.endswith(".js") for asset in assets)
    assert any(asset.endswith(".css") for asset in assets)
    for asset in assets:
        assert not urlsplit(asset).netloc, asset
        served = await api.get(urljoin(str(api.base_url) + "/docs", asset))
        assert served.status_code == 200, asset
        assert len(served.content) > 100, asset
    assert (await api.get("/redoc")).status_code == 404


def _chromium_or_skip() -> str:
    """Chromium's path; without it, skip locally but fail in CI, which must run this test."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = "needs Debian's chromium: apt-get install -y chromium (as root)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


async def test_the_docs_page_renders_in_a_browser_without_internet(service_url: str) -> None:
    """Headless Chromium, cut off from everything but the service, shows the operations."""
    from playwright.async_api import Route, async_playwright

    executable = _chromium_or_skip()
    service_host = urlsplit(service_url).hostname
    refused: list[str] = []

    async def only_the_service(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname == service_host:
            await route.continue_()
        else:
            refused.append(url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable)
        try:
            page = await browser.new_page()
            await page.route("**/*", only_the_service)
            await page.goto(f"{service_url}/docs")
            operation = page.locator(".opblock-summary-path", has_text="/v1/tasks").first
            await operation.wait_for(state="visible", timeout=30_000)
            assert await page.locator(".opblock").count() >= 5
        finally:
            await browser.close()
    assert refused == []
