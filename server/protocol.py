"""API schemas of the ranking server (pydantic). Serving logic lives in ``server/app.py``.

Three dialects over one engine:
- ``/v1/rank``   native: query + items -> results sorted by score;
- ``/v1/score``  SGLang-compatible scoring API (query, items, label_token_ids, apply_softmax);
- ``/v1/rerank`` Cohere / Jina / vLLM-compatible rerank API (query, documents, top_n).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not UTF-8 text (a lone surrogate at character {exc.start})") from None
    return value


# JSON may carry lone surrogates ("\ud800") that no tokenizer can encode: a 422 naming the field
Text = Annotated[str, AfterValidator(_utf8)]


class _Strict(BaseModel):
    """Unknown fields are rejected: a typo in a field name is a 422, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class Usage(BaseModel):
    prompt_tokens: int = Field(
        description="tokens of all prompts as sent (query counted once per item)"
    )
    computed_tokens: int = Field(
        description="tokens run through the model (shared query counted once)"
    )
    items: int
    total_tokens: int = Field(description="same as prompt_tokens (OpenAI-style field)")


# ---- native --------------------------------------------------------------------------------------
class RankRequest(_Strict):
    query: Text = Field(min_length=1, description="member context: profile, history, instructions")
    items: list[Text] = Field(min_length=1, description="candidates, each scored with the query")
    top_k: int | None = Field(default=None, ge=1, description="return only the best k")
    model: str | None = Field(default=None, description="optional; must match the served model")


class RankResult(BaseModel):
    index: int = Field(description="position of the item in the request")
    score: float = Field(description="P(yes) / (P(yes) + P(no))")


class RankResponse(BaseModel):
    model: str
    results: list[RankResult]
    usage: Usage


# ---- SGLang-compatible ------------------------------------------------------------------------
class ScoreRequest(_Strict):
    query: Text = Field(min_length=1)
    items: list[Text] = Field(min_length=1)
    label_token_ids: list[int] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[yes_id, no_id]; must be the model's label tokens (default: them)",
    )
    apply_softmax: bool = Field(default=True, description="normalise over the label tokens")
    item_first: bool = Field(default=False, description="item before query (not supported: 422)")
    model: str | None = None


class ScoreResponse(BaseModel):
    scores: list[list[float]] = Field(description="per item: a value per label token id")
    model: str
    usage: Usage
    object: Literal["scoring"] = "scoring"


# ---- Cohere / Jina / vLLM rerank --------------------------------------------------------------
class RerankRequest(_Strict):
    query: Text = Field(min_length=1)
    documents: list[Text] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    model: str | None = None
    # vLLM's field (its benchmark client always sends -1). Prompts are never truncated here:
    # a too-long query or item is a 400 naming the limit, so only "no truncation" is accepted.
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=-1, le=-1, description="only -1 / null (no truncation) is supported"
    )


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens of all prompts (query counted once per item)")
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


# ---- misc -----------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "slimrank"
    format: str
    engine: str
    parameters: int | None
    max_items: int
    label_tokens: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
