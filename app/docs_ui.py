"""The API's documentation page, `/docs`: Swagger UI served by the service itself.

FastAPI's own page loads Swagger UI from a CDN, which leaves it blank in a network without
egress. The assets here are swagger-ui-dist's bundle, stylesheet and icon as the
fastapi-swagger package ships them (it follows swagger-ui's releases); only the files are
used, served under /docs/assets. ReDoc is not offered.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# Swagger UI would otherwise ask an online validator about the document.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def swagger_ui_assets() -> Path:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css and favicon-32x32.png."""
    return Path(str(files("fastapi_swagger") / "resources"))


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs from the service's own assets (create the app with
    `docs_url=None, redoc_url=None`)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that mounts the service under a prefix, links keep that prefix.
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API documentation",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
