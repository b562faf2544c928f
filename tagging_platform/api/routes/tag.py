"""Synchronous tagging of a few uploaded images (POST /v1/tag)."""

import re
import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from tagging_platform import models
from tagging_platform.api.deps import AppSettings, Authenticated, Metrics, Models, TagRate
from tagging_platform.api.errors import ApiError
from tagging_platform.api.schemas import TagResponse, error_responses

router = APIRouter(tags=["tagging"])
_MODEL_SPEC = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}(@[A-Za-z0-9:._-]{1,100})?\Z")


@router.post(
    "/v1/tag",
    response_model=TagResponse,
    summary="Tag one image (or a few) synchronously: multipart field `image`, repeatable",
    description=(
        "At most `TP_API_MAX_TAG_IMAGES` images (8 by default) per request, each of at most "
        "`TP_API_MAX_TAG_PIXELS` pixels (89,478,485 by default; width x height, read from the file's header "
        "before anything is decoded: larger is 413 `image_too_large`, submit it in a batch). Images are "
        "decoded within a pixel budget shared by every request of the server; when it stays taken too long "
        "the answer is 503 `busy` with `Retry-After`. Requests for the same model that arrive together share one "
        "forward pass (`TP_API_TAG_BATCH_WINDOW_MS`, `TP_API_TAG_MAX_BATCH`). A model given by name alone is "
        "the name's latest version as read within `TP_API_MODEL_ALIAS_TTL_S` (5 s by default). Each customer may send "
        "`TP_API_TAG_RATE_PER_S` requests a second in bursts of `TP_API_TAG_BURST`: beyond, 429 `rate_limited` "
        "with `Retry-After`."
    ),
    responses=error_responses(400, 401, 405, 413, 422, 429, 503),
)
async def tag_images(
    who: Authenticated,
    image: Annotated[list[UploadFile], File(description="image files (JPEG, PNG, ...)")],
    settings: AppSettings,
    cache: Models,
    metrics: Metrics,
    rate: TagRate,
    model: Annotated[str | None, Query(description='"name" or "name@version"')] = None,
):
    rate.take(who.name)
    spec = model or settings.default_model
    if not _MODEL_SPEC.match(spec):
        raise ApiError(422, "invalid_model", f"{spec[:100]!r} is not a model name or name@version", {"field": "model"})
    if len(image) > settings.api_max_tag_images:
        raise ApiError(
            413, "too_many_images", f"at most {settings.api_max_tag_images} images per request; submit a batch for more"
        )
    files = [(upload.filename or f"image-{i + 1}", await upload.read()) for i, upload in enumerate(image)]

    def work():
        try:
            ref = cache.resolve(spec)
        except models.ModelError as exc:
            raise ApiError(422, "unknown_model", str(exc), {"field": "model"}) from None
        started = time.perf_counter()
        try:
            answer = cache.tag(ref, files)
        except ApiError as exc:
            if exc.code == "invalid_image":
                metrics.tagged(ref.name, ok=0, errors=1, seconds=0)
            raise
        metrics.tagged(ref.name, ok=len(files), errors=0, seconds=time.perf_counter() - started)
        return answer

    return await run_in_threadpool(work)
