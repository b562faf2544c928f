"""The registered models a customer may name (GET /v1/models)."""

from fastapi import APIRouter

from tagging_platform import models
from tagging_platform.api.deps import S3, AppSettings, Authenticated
from tagging_platform.api.schemas import ModelList, error_responses

router = APIRouter(tags=["models"])
_CARD_FIELDS = ("name", "version", "kind", "architecture", "num_classes", "description", "preprocessing", "profile")


@router.get(
    "/v1/models",
    response_model=ModelList,
    summary="The registered models (latest versions)",
    responses=error_responses(401, 405),
)
def list_models(who: Authenticated, s3: S3, settings: AppSettings):
    cards = models.list_models(s3, settings.model_bucket)
    return {
        "models": [
            {**{k: card.get(k) for k in _CARD_FIELDS if k in card}, "default": card["name"] == settings.default_model}
            for card in cards
        ]
    }
