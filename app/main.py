"""The API application: REST for internal services and the receiver for EvoLink callbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import __doc__ as about
from app.callbacks.routes import router as callbacks_router
from app.clients.routes import router as clients_router
from app.deps import ResourcesDep
from app.docs_ui import install_docs
from app.edge import RequestEdge
from app.errors import install_error_handlers
from app.metrics import router as metrics_router
from app.openapi import install_openapi
from app.resources import Resources, open_resources
from app.results.routes import router as results_router
from app.settings import Settings
from app.tasks.routes import router as tasks_router
from app.uploads.routes import MULTIPART_SLACK_BYTES, UPLOADS_PATH
from app.uploads.routes import router as uploads_router
from app.webhooks.routes import router as webhooks_router

REQUEST_ID_HEADER = "X-Request-ID"

DESCRIPTION = """
Internal services create **qwen-image-edit-plus** edit tasks here; edithook submits them to
EvoLink, receives EvoLink's callbacks, and answers questions about the tasks and their
result images.

Authenticate with `Authorization: Bearer <key>`; a client sees only its own tasks. Errors are
RFC 9457 problem details (`application/problem+json`).
"""


def _acceptable_request_id(value: str) -> bool:
    """A caller's request id is kept if it is short printable ASCII; otherwise one is made."""
    return len(value) <= 128 and value.isascii() and value.isprintable()


def create_app(settings: Settings | None = None, resources: Resources | None = None) -> FastAPI:
    """The API app. It opens its own resources from `settings`, or uses `resources` as given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            app.state.resources = resources
            yield
            return
        assert settings is not None
        async with open_resources(settings, listen=True) as opened:
            app.state.resources = opened
            yield

    if settings is not None:
        limits = settings
    elif resources is not None:
        limits = resources.settings
    else:
        raise ValueError("create_app needs settings or resources")
    app = FastAPI(
        title="edithook",
        summary=about,
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # A redirect would turn EvoLink's POST into a lost callback; unknown paths are 404s.
        redirect_slashes=False,
        # Served offline by install_docs below; ReDoc is not offered.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    install_openapi(app)
    # Added last, runs first: every answer, the edge's own included, carries a request id.
    app.add_middleware(
        RequestEdge,
        rest_limit=limits.rest_max_body_bytes,
        callback_limit=limits.callback_max_body_bytes,
        body_limits={UPLOADS_PATH: limits.upload_max_bytes + MULTIPART_SLACK_BYTES},
    )
    app.add_middleware(
        CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER, validator=_acceptable_request_id
    )
    # Callbacks first: routes are matched in order, and they are most of the traffic.
    app.include_router(callbacks_router)
    app.include_router(tasks_router)
    app.include_router(results_router)
    app.include_router(uploads_router)
    app.include_router(webhooks_router)
    app.include_router(clients_router)
    app.include_router(metrics_router)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: the database answers",
        responses={
            503: {
                "description": "The database does not answer.",
                "content": {"application/json": {"example": {"status": "unavailable"}}},
            }
        },
    )
    async def readyz(resources: ResourcesDep) -> JSONResponse:
        try:
            async with resources.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, 503)
        return JSONResponse({"status": "ok"})

    return app
