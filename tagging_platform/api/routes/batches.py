"""Batches: submit one (POST /v1/batches), list yours, read one's state."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from tagging_platform.api.deps import AppSettings, Authenticated, BatchStore
from tagging_platform.api.schemas import BatchAccepted, BatchList, BatchRequest, BatchStatus, error_responses

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def batch_url(request: Request, settings: AppSettings, batch_id: str) -> str:
    # The configured public URL, never the request's Host header (a client chooses that one).
    return settings.api_base_url + request.app.url_path_for("get_batch", batch_id=batch_id)


def _model(record: dict) -> dict:
    return {"name": record["model"]["name"], "version": record["model"]["version"]}


@router.post(
    "",
    status_code=202,
    response_model=BatchAccepted,
    summary="Submit a batch: a manifest in the body or an s3:// URI of one",
    description=(
        "A customer may have `TP_API_MAX_ACTIVE_BATCHES` unfinished batches (submitted, run not over); "
        "beyond, 429 `too_many_batches` with `Retry-After`."
    ),
    responses=error_responses(400, 401, 403, 405, 413, 422, 429),
)
def submit_batch(body: BatchRequest, who: Authenticated, request: Request, settings: AppSettings, batches: BatchStore):
    record = batches.submit(
        who,
        images=body.images,
        manifest_uri=body.manifest,
        model=body.model,
        output=body.output,
        reference=body.id,
        publish_options=body.model_dump(include={"output_format", "max_labels", "min_confidence"}, exclude_none=True),
    )
    status_url = batch_url(request, settings, record["batch_id"])
    answer = {**record, "status_url": status_url, "state": "queued", "model": _model(record)}
    return JSONResponse(answer, status_code=202, headers={"Location": status_url})


@router.get(
    "", response_model=BatchList, summary="Your batches, newest first", responses=error_responses(401, 405, 422)
)
def list_batches(
    who: Authenticated,
    request: Request,
    settings: AppSettings,
    batches: BatchStore,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    return {
        "batches": [
            {**record, "status_url": batch_url(request, settings, record["batch_id"]), "model": _model(record)}
            for record in batches.list(who, limit)
        ]
    }


@router.get(
    "/{batch_id}",
    response_model=BatchStatus,
    summary="A batch's state, counts, progress, check results and result location",
    responses=error_responses(401, 404, 405, 503),
    name="get_batch",
)
def get_batch(batch_id: str, who: Authenticated, batches: BatchStore):
    return batches.status(who, batch_id)
