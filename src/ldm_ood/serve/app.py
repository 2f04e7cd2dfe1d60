"""The scoring service's HTTP API (FastAPI; its OpenAPI schema is served at ``/openapi.json``, the
interactive page at ``/docs``).

* ``POST /v1/score`` — a multipart upload (field ``file``) of one NIfTI scan (``.nii`` / ``.nii.gz``)
  or a zip of one DICOM series; returns the score, percentile, flag, the operating threshold and its validation FPR, the model id,
  ``qc_reason`` (why the input check refused the scan; then ``score`` is null — +inf in score files —
  ``flag`` true and ``percentile`` 100), the seconds taken, and a link to the anomaly map;
* ``GET /v1/maps/{id}`` — the anomaly map of a scored scan, NIfTI (gzip) on the scan's own grid and
  affine, kept for ``map_ttl_s`` seconds within the service's map bounds (:mod:`.maps`);
  ``DELETE /v1/maps/{id}`` frees it earlier;
* ``GET /v1/health`` — 200 while scans are taken, 503 while shutting down; the queue's state;
* ``GET /v1/model`` — what the model is: id, method, calibration, expected input, network hashes, versions.

Every error is JSON ``{"error": <code>, "detail": <message>}``: 400 ``bad_upload``, 404 ``not_found``,
413 ``too_large``, 422 ``unusable_scan`` or ``invalid_request``, 429
``queue_full`` and 503 ``shutting_down`` (both with ``Retry-After``), 507 ``insufficient_storage``;
anything else is a 500 ``internal_error`` whose traceback goes to the server's log, never to the client.
The body size limit is enforced while the body arrives (:class:`BodyLimit`), before it is parsed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any, BinaryIO, Iterator, Literal

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import OutputError, ServiceBusyError, UploadError
from .service import ScoringService

log = logging.getLogger("ldm_ood.serve")

UPLOAD_CODES = {400: "bad_upload", 413: "too_large", 422: "unusable_scan"}
MAP_ID = r"^[0-9a-f]{32}$"


class ErrorBody(BaseModel):
    """Every error's body."""

    error: str = Field(description="machine-readable code, e.g. queue_full")
    detail: str = Field(description="what went wrong, naming the upload by its file name")


class MapLink(BaseModel):
    id: str = Field(description="32 hex digits")
    url: str = Field(description="GET it for the anomaly map (NIfTI, gzip)")
    bytes: int
    expires_in_s: float = Field(description="kept at most this long (fewer if the service's map bounds are reached)")


class ScoreResponse(BaseModel):
    case_id: str = Field(description="the upload's file name without its suffix (or 'scan'), or a DICOM series' "
                                     "SeriesInstanceUID; seeds the LDM's noise as in folder mode")
    model_id: str
    method: str
    score: float | None = Field(description="pred_score, higher = more OOD; null when the input check refused "
                                            "the scan (qc_reason)")
    model_score: float | None = Field(description="the model's own score, also when the input check refused the scan")
    percentile: float | None = Field(description="percentage of validation scores <= score")
    flag: bool = Field(description="score above the threshold (or refused by the input check)")
    threshold: float = Field(description="the operating threshold")
    fpr: float = Field(description="the validation false-positive rate the threshold was set at")
    qc_reason: str | None = Field(description="why the input check refused the scan, null when it did not")
    calibration_id: str
    seconds: float = Field(description="reading, preprocessing and scoring")
    queue_seconds: float = Field(description="waiting for a worker")
    total_seconds: float = Field(description="from the request's arrival at the handler to the response")
    map: MapLink | None = Field(description="the anomaly map; null when maps are not kept")
    metrics: dict[str, float | None] = Field(description="the method's other score-file columns (score_mse, mse@<t>, nll ...)")


class Health(BaseModel):
    status: Literal["ok", "shutting_down"]
    model_id: str
    method: str
    running: int
    waiting: int
    workers: int
    queue: int
    maps_kept: int
    scored: int
    refused: int
    failed: int
    uptime_s: float


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": HTTPStatus(s).phrase} for s in statuses}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` is answered 413 — at once when its
    ``Content-Length`` says so, else as soon as that many bytes arrived (whatever the app did with them)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, "too_large", f"the request body is larger than the limit of {self.max_bytes} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            if state["exceeded"]:
                return  # the app's answer to the cut body is replaced by the 413
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await too_large(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised into the app when the body passes the limit (:class:`BodyLimit`)."""


def _file_chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    try:
        while chunk := fh.read(size):
            yield chunk
    finally:
        fh.close()


def create_app(service: ScoringService) -> FastAPI:
    """The API over ``service`` (module docstring); its lifespan's end waits for the admitted scans
    and deletes the service's private folder."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(service.shutdown)

    app = FastAPI(title="ldm-ood scoring service", version=__version__, lifespan=lifespan,
                  description="OOD score, flag and anomaly map of one scan per request, from a model loaded once.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_upload_bytes)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, err: UploadError) -> JSONResponse:
        return error_response(err.status, UPLOAD_CODES.get(err.status, _code(err.status)), str(err))

    @app.exception_handler(ServiceBusyError)
    async def busy(request: Request, err: ServiceBusyError) -> JSONResponse:
        return error_response(err.status, err.code, str(err), headers={"Retry-After": "1"})

    @app.exception_handler(OutputError)
    async def no_space(request: Request, err: OutputError) -> JSONResponse:
        log.error("writing an output failed: %s", err)
        return error_response(507, "insufficient_storage", "the service could not write the anomaly map "
                                                           f"({err.problem}); see the server's log")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in err.errors()]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, _code(err.status_code), str(err.detail), headers=err.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", f"the request failed on the server ({type(err).__name__}); "
                                                     "the server's log has the details")

    @app.post("/v1/score", response_model=ScoreResponse, responses=_errors(400, 413, 422, 429, 503, 507),
              summary="Score one scan")
    async def score(request: Request, file: Annotated[UploadFile, File(
            description="one scan of the model's dimensionality: NIfTI (.nii or .nii.gz), or a zip of one "
                        "DICOM series")]) -> ScoreResponse:
        t0 = time.perf_counter()
        try:
            result, waited = await service.queue.run(lambda: service.score_upload(file.file, file.filename))
        except ServiceBusyError:
            service.count("refused")
            raise
        except Exception:
            service.count("failed")
            raise
        service.count("scored")
        return ScoreResponse(**result, queue_seconds=round(waited, 3), total_seconds=round(time.perf_counter() - t0, 3))

    @app.get("/v1/maps/{map_id}", response_class=Response, summary="The anomaly map of a scored scan",
             responses={200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "NIfTI (gzip) on the scan's own grid and affine"}, **_errors(404, 422)})
    async def get_map(map_id: Annotated[str, PathParam(pattern=MAP_ID)]) -> Response:
        opened = service.maps.open(map_id)
        if opened is None:
            raise HTTPException(404, f"no anomaly map {map_id}: never made, or no longer kept (maps are kept "
                                     f"{service.settings.map_ttl_s:g} s at most)")
        kept, fh = opened
        return StreamingResponse(_file_chunks(fh), media_type="application/gzip", headers={
            "Content-Disposition": f'attachment; filename="{kept.filename}"', "Content-Length": str(kept.size)})

    @app.delete("/v1/maps/{map_id}", status_code=204, response_class=Response, responses=_errors(404, 422),
                summary="Delete a kept anomaly map")
    async def delete_map(map_id: Annotated[str, PathParam(pattern=MAP_ID)]) -> Response:
        if not service.maps.delete(map_id):
            raise HTTPException(404, f"no anomaly map {map_id}")
        return Response(status_code=204)

    @app.get("/v1/health", response_model=Health, responses={503: {"model": Health, "description": "shutting down"}},
             summary="Whether scans are taken, and the queue")
    async def health() -> JSONResponse:
        q, counts = service.queue.state(), service.counts
        body = Health(status="shutting_down" if q.closing else "ok", model_id=service.session.model_id,
                      method=service.session.method, running=q.running, waiting=q.waiting, workers=q.workers,
                      queue=q.max_waiting, maps_kept=len(service.maps), uptime_s=round(time.time() - service.started, 3),
                      **counts)
        return JSONResponse(body.model_dump(), status_code=503 if q.closing else 200)

    description = service.session.describe()

    @app.get("/v1/model", response_model=dict[str, Any], summary="What the model is")
    async def model() -> dict[str, Any]:
        return description

    return app
