"""The HTTP surface: an OpenAI-compatible FastAPI app in front of one model-owning worker.

Routes parse, hand a job to the worker (``generate.Generation``) and format; nothing here touches
the model. The app answers as soon as it starts: ``/health`` says 503 until the model has loaded
in a background thread, then 200. Every error is OpenAI-shaped (``responses.ApiError``).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .generate import Generation, chat_input, completion_input
from .metrics import Metrics
from .page import add_page
from .responses import ApiError, error_body
from .schemas import ChatCompletionRequest, CompletionRequest, RequestError, parse_request
from .service import Service, load_service
from .settings import ServerSettings

__all__ = ["create_app", "ServerState"]

log = logging.getLogger(__name__)


class ServerState:
    """The app's model: None while loading; ``error`` when loading failed."""

    def __init__(self, settings: ServerSettings, loader: Callable[[Metrics], Service]) -> None:
        self.settings = settings
        self.loader = loader
        self.service: Service | None = None
        self.error: BaseException | None = None
        self.metrics = Metrics()

    def load(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        try:
            service = self.loader(self.metrics)
            service.worker.start()
            self.service = service
        except BaseException as exc:  # reported through /health and on_error; the thread ends here
            self.error = exc
            if on_error is not None:
                on_error(exc)
            else:
                log.error("loading the model failed: %s", exc)

    def ready(self) -> Service:
        if self.service is not None:
            if not self.service.worker.alive:
                raise ApiError(503, "the model worker has stopped; see the server log and restart it")
            return self.service
        if self.error is not None:
            raise ApiError(503, f"the model failed to load: {self.error}")
        raise ApiError(503, "Loading model")

    def close(self) -> None:
        if self.service is not None:
            self.service.worker.stop()


class EventStreamResponse(StreamingResponse):
    """SSE that runs ``on_close`` when the response ends, however it ends (client gone before or
    during the stream, send failed), so a slot is freed at once rather than at garbage collection."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, *, on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.on_close()


def create_app(
    settings: ServerSettings,
    *,
    loader: Callable[[Metrics], Service] | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app. ``loader(metrics)`` builds the service in a thread once the app starts (default:
    ``load_service(settings, metrics=metrics)``); the worker counts into ``metrics``."""
    state = ServerState(settings, loader or (lambda metrics: load_service(settings, metrics=metrics)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(on_load_error,), name="gemma-mtp-load", daemon=True).start()
        yield
        state.close()

    app = FastAPI(title="gemma-mtp", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    _add_error_handlers(app, state)
    app.include_router(_public_routes(state))
    add_page(app)
    app.include_router(_private_routes(state), dependencies=[Depends(_api_key_check(settings.api_key))])
    return app


def _api_key_check(api_key: str | None) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
        if not given:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "invalid API key")

    return check


def _public_routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    @router.get("/v1/health")
    def health() -> dict[str, str]:
        state.ready()
        return {"status": "ok"}

    return router


def _private_routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    @router.get("/models")
    def models() -> dict[str, Any]:
        service = state.ready()
        models = [
            {
                "id": model_id,
                "object": "model",
                "created": service.created,
                "owned_by": "gemma-mtp",
                "meta": service.info,
            }
            for model_id in service.model_ids
        ]
        return {"object": "list", "data": models}

    @router.get("/metrics")
    def metrics() -> PlainTextResponse:
        gauges = {}
        if state.service is not None:
            snapshot = state.service.worker.snapshot()
            gauges = {
                "num_requests_running": snapshot["running"],
                "num_requests_waiting": snapshot["waiting"],
                "num_slots": len(snapshot["slots"]),
            }
        text = state.metrics.render(gauges)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/slots")
    def slots() -> dict[str, Any]:
        return state.ready().worker.snapshot()

    @router.post("/v1/chat/completions")
    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(state, request, "/v1/chat/completions", ChatCompletionRequest, chat_input)

    @router.post("/v1/completions")
    @router.post("/completions")
    async def completions(request: Request):
        return await _generate(state, request, "/v1/completions", CompletionRequest, completion_input)

    return router


async def _generate(state: ServerState, request: Request, endpoint: str, schema: type, make_prompt: Callable):
    state.metrics.request(endpoint)
    service = state.ready()
    body = parse_request(await request.body(), schema)
    _check_model(service, body.model)
    prompt_ids, media = await make_prompt(service, body)
    generation = Generation(service, body, prompt_ids, chat=schema is ChatCompletionRequest, media=media)
    if body.stream:
        return EventStreamResponse(generation.stream(), on_close=generation.close)

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return JSONResponse(await generation.collect(wait_disconnect))


def _check_model(service: Service, requested: str | None) -> None:
    """A request names one of the models ``/v1/models`` lists, or none (then it gets that one)."""
    if requested and requested not in service.model_ids:
        served = ", ".join(f"`{model_id}`" for model_id in service.model_ids)
        raise ApiError(
            404,
            f"The model `{requested}` does not exist. This server serves {served}; "
            "send that name as model, or leave model out.",
            type="invalid_request_error",
            param="model",
        )


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    def respond(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
        state.metrics.error(status)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return respond(400, error_body(400, str(exc), param=exc.param))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(400, error_body(400, str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return respond(exc.status_code, error_body(exc.status_code, message), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return respond(500, error_body(500, f"internal error: {type(exc).__name__}: {exc}"))
