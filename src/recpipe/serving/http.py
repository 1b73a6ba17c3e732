"""``recpipe serve``: an HTTP JSON service (FastAPI on uvicorn) over an exported top-K SavedModel.

Endpoints (docs/contracts.md): ``GET|POST /v1/recommend``, ``GET /v1/similar``, ``GET /v1/model``,
``GET /healthz``, ``GET /readyz``, ``POST /admin/reload``; OpenAPI at ``/docs``. Every error is a
JSON ``{"error": {"status", "message", "details"}}`` with a 4xx code for bad input. With
``RECPIPE_API_KEY`` set, every request but ``/healthz`` and ``/readyz`` needs header ``X-API-Key``.
The model is swapped atomically on reload: a request keeps the model it started with. A ranked
export (``LoadedModel.instant``) is answered on the event loop; other models through the
micro-batcher (``recpipe.serving.batcher``) or, with ``--no-batching``, one worker-thread call each.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recpipe.errors import RecpipeError
from recpipe.serving.batcher import Answer, MicroBatcher
from recpipe.serving.runtime import LoadedModel, ModelSource, load

API_KEY_ENV = "RECPIPE_API_KEY"
API_KEY_HEADER = "X-API-Key"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes answer without the API key
MAX_BATCH = 256  # users per POST /v1/recommend
MAX_BODY_BYTES = 64 * 1024
MAX_ID_LENGTH = 256
log = logging.getLogger("recpipe.serve")

UserId = Annotated[StrictStr | StrictInt, Field(description="a user id as in the source data (integers are accepted)")]


class RecommendRequest(BaseModel):
    """``POST /v1/recommend`` body."""

    model_config = {"extra": "forbid"}
    user_ids: list[UserId] = Field(min_length=1, max_length=MAX_BATCH)
    k: StrictInt = Field(ge=1, description="items per user, 1..max_k of the model (GET /v1/model)")


class Item(BaseModel):
    item_id: str
    title: str
    score: float | None = Field(description="null when not finite (NaN or infinite: a diverged model)")


class UserRecommendations(BaseModel):
    user_id: str
    fallback: bool = Field(description="unknown user: the most popular items")
    items: list[Item] = Field(description="best first; fewer than k when the user has fewer unseen items")


class RecommendResponse(UserRecommendations):
    model_revision: str
    k: int


class BatchResponse(BaseModel):
    model_revision: str
    k: int
    results: list[UserRecommendations]


class SimilarResponse(BaseModel):
    model_revision: str
    k: int
    query: dict[str, Any]
    items: list[Item]


@dataclass
class ServiceState:
    """The served model (swapped whole on reload) and how requests reach it."""

    source: ModelSource
    batching: bool = True
    max_wait_s: float = 0.0
    reload_interval_s: float = 0.0
    model: LoadedModel | None = None
    load_error: str | None = None
    batcher: MicroBatcher | None = None
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ready_model(self) -> LoadedModel:
        model = self.model  # one read: the request keeps this model even if a reload swaps it
        if model is None:
            raise HTTPException(503, self.load_error or "the model is still loading")
        return model

    async def reload(self, only_if_changed: bool = False) -> bool:
        """Load what the source points at now and swap it in; False when nothing changed."""
        async with self._reload_lock:
            current = self.model
            if (
                only_if_changed
                and current is not None
                and await run_in_threadpool(self.source.revision) == current.revision
            ):
                return False
            try:
                new = await run_in_threadpool(load, self.source)
            except Exception as e:
                self.load_error = f"loading {self.source} failed: {e}"
                raise
            self.model, self.load_error = new, None
            log.info("serving %s (revision %s)", self.source, new.revision)
            return True

    async def recommend(self, model: LoadedModel, user_ids: list[str], k: int) -> Answer:
        """A ranked export answers at once (array indexing: a thread hop or a batch would cost more);
        a model scored by its graph through the micro-batcher, or in a worker thread."""
        if model.instant:
            return model.recommend(user_ids, k)
        if self.batcher is not None:
            return await self.batcher.submit(model, user_ids, k)
        return await run_in_threadpool(model.recommend, user_ids, k)

    async def watch(self) -> None:
        """Reload whenever the source points at a new model (polled every ``reload_interval_s``)."""
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.reload(only_if_changed=True)
            except Exception as e:  # keep serving the old model
                log.error("reload of %s failed, still serving the previous model: %s", self.source, e)


def error_response(status: int, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message, "details": details}}, status_code=status)


class Guard:
    """ASGI middleware: the API key (401) and the request body size limit (413), before any parsing."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (
            self.api_key
            and scope["path"] not in OPEN_PATHS
            and not hmac.compare_digest(headers.get(API_KEY_HEADER.lower(), "").encode(), self.api_key.encode())
        ):
            return await error_response(401, f"missing or wrong {API_KEY_HEADER} header")(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await self._too_large(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:  # chunked bodies declare no length: read up to the limit
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, f"request body larger than {self.max_body} bytes")(scope, receive, send)


def _items(ids: np.ndarray, titles: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """``Item`` objects as JSON-ready dicts (best first, empty slots left out; a NaN or infinite
    score, which JSON cannot hold, as null)."""
    return [
        {"item_id": i.decode(), "title": t.decode(), "score": s if math.isfinite(s) else None}
        for i, t, s in zip(ids.tolist(), titles.tolist(), scores.tolist())
        if i
    ]


def _check_k(k: int, model: LoadedModel) -> None:
    if not 1 <= k <= model.max_k:
        raise HTTPException(422, f"k must be between 1 and {model.max_k} (the model's max_k), got {k}")


def create_app(state: ServiceState, api_key: str | None = None) -> FastAPI:
    """The FastAPI application around ``state`` (loads ``state.source`` at start-up unless loaded)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.batching:
            state.batcher = MicroBatcher(lambda m, users, k: m.recommend(users, k), state.max_wait_s)
            state.batcher.start()
        tasks = []
        if state.model is None:
            tasks.append(asyncio.create_task(_initial_load(state)))
        if state.reload_interval_s > 0:
            tasks.append(asyncio.create_task(state.watch()))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(
        title="recpipe",
        lifespan=lifespan,
        description="Top-K recommendations from a recpipe export. Errors: "
        '`{"error": {"status", "message", "details"}}`. '
        f"With {API_KEY_ENV} set, send header `{API_KEY_HEADER}` (not needed for /healthz, /readyz).",
    )
    app.add_middleware(Guard, api_key=api_key)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"location": list(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(400, "malformed JSON body", errors)
        return error_response(
            422,
            "invalid request: " + "; ".join(f"{'.'.join(map(str, e['location']))}: {e['message']}" for e in errors),
            errors,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A model is loaded and serving")
    async def readyz() -> JSONResponse:
        model = state.model
        if model is None:
            return error_response(503, state.load_error or "the model is still loading")
        return JSONResponse({"status": "ready", "model_revision": model.revision})

    @app.get("/v1/model", summary="What is being served")
    async def model_info() -> dict[str, Any]:
        return state.ready_model().metadata

    # The answers are built as plain dicts (the declared response models document them in OpenAPI):
    # validating our own output again would cost more than a ranked export's lookup.
    @app.get("/v1/recommend", response_model=RecommendResponse, summary="Top-k items for one user")
    async def recommend_one(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(description="1..max_k")],
    ) -> JSONResponse:
        model = state.ready_model()
        _check_k(k, model)
        ids, titles, scores, known = await state.recommend(model, [user_id], k)
        return JSONResponse(
            {
                "user_id": user_id,
                "fallback": not bool(known[0]),
                "items": _items(ids[0], titles[0], scores[0]),
                "model_revision": model.revision,
                "k": k,
            }
        )

    @app.post("/v1/recommend", response_model=BatchResponse, summary=f"Top-k items for up to {MAX_BATCH} users")
    async def recommend_batch(body: RecommendRequest) -> JSONResponse:
        model = state.ready_model()
        _check_k(body.k, model)
        users = [str(u) for u in body.user_ids]
        if any(not u or len(u) > MAX_ID_LENGTH for u in users):
            raise HTTPException(422, f"user ids must have 1..{MAX_ID_LENGTH} characters")
        ids, titles, scores, known = await state.recommend(model, users, body.k)
        results = [
            {"user_id": u, "fallback": not bool(known[n]), "items": _items(ids[n], titles[n], scores[n])}
            for n, u in enumerate(users)
        ]
        return JSONResponse({"model_revision": model.revision, "k": body.k, "results": results})

    @app.get("/v1/similar", response_model=SimilarResponse, summary="Items similar to a catalog item or a new item")
    async def similar(
        k: Annotated[int, Query(description="1..max_k")],
        item_id: Annotated[str | None, Query(max_length=MAX_ID_LENGTH, description="a catalog item")] = None,
        title: Annotated[str | None, Query(max_length=1000, description="a new item's title")] = None,
        genres: Annotated[str, Query(max_length=1000, description='a new item\'s genres, "|"-separated')] = "",
        year: Annotated[int | None, Query(ge=0, le=9999, description="a new item's year")] = None,
    ) -> JSONResponse:
        model = state.ready_model()
        if model.similar is None:
            raise HTTPException(
                404,
                "the served model has no similar_items signature (only model=hybrid and "
                "model=content exports have one)",
            )
        if (item_id is None) == (title is None):
            raise HTTPException(
                422, "give exactly one of item_id (a catalog item) or title (a new item, with optional genres and year)"
            )
        _check_k(k, model)
        if item_id is not None:
            found = await run_in_threadpool(model.similar_to_item, item_id, k)
            if found is None:
                raise HTTPException(404, f"unknown item_id {item_id!r}")
            query: dict[str, Any] = {"item_id": item_id}
        else:
            assert title is not None  # exactly one of the two was given
            found = await run_in_threadpool(model.similar_to_features, title, genres, year, k)
            query = {"title": title, "genres": genres, "year": year}
        return JSONResponse({"model_revision": model.revision, "k": k, "query": query, "items": _items(*found)})

    @app.post("/admin/reload", summary="Load the model the source points at now and swap it in")
    async def reload() -> dict[str, Any]:
        try:
            await state.reload()
        except Exception as e:
            current = state.model.revision if state.model is not None else None
            raise HTTPException(500, f"reload failed, still serving revision {current}: {e}") from e
        return {"reloaded": True, "model": state.ready_model().metadata}

    return app


async def _initial_load(state: ServiceState) -> None:
    try:
        await state.reload()
    except Exception as e:
        log.error("%s", state.load_error or e)


def serve_command(host: str, port: int, model: str, batching: bool, max_wait_ms: float, reload_interval: float) -> int:
    """``recpipe serve``: check the model source, then serve it with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if not 0 < port < 65536:
        raise RecpipeError(f"--port must be 1..65535 (got {port})")
    if max_wait_ms < 0 or reload_interval < 0:
        raise RecpipeError("--batch-wait-ms and --reload-interval must not be negative")
    source = ModelSource.parse(model)
    source.revision()  # a missing export or an unknown registered model stops here, before binding
    state = ServiceState(source, batching=batching, max_wait_s=max_wait_ms / 1000, reload_interval_s=reload_interval)
    app = create_app(state, api_key=os.environ.get(API_KEY_ENV) or None)
    print(
        f"recpipe serve: {source} on http://{host}:{port} (docs: /docs; micro-batching "
        f"{'on, ' + str(max_wait_ms) + ' ms' if batching else 'off'})",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    return 0
