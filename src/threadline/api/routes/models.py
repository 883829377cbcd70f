"""OpenAI-compatible model listing: GET /v1/models and GET /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter

from threadline.api.deps import ModelsDep, PrincipalDep
from threadline.api.schemas.models import ModelList, ModelRead
from threadline.services import models

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(registry: ModelsDep, _: PrincipalDep) -> ModelList:
    default = registry.default_model
    return ModelList(data=[ModelRead.of(m, registry.created, default) for m in models.list_models(registry)])


# `:path` because upstream model ids may contain slashes ("meta-llama/Llama-3.1-8B-Instruct").
@router.get("/models/{model:path}", response_model=ModelRead)
async def get_model(model: str, registry: ModelsDep, _: PrincipalDep) -> ModelRead:
    return ModelRead.of(models.get_model(registry, model), registry.created, registry.default_model)
