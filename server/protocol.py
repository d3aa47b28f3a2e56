"""API schemas of the ranking server (pydantic). The routes are in ``server/app.py``, the
serving logic in ``server/service.py``.

Four dialects over one engine:
- ``/v1/rank``   native: query + items -> results sorted by score;
- ``/v1/score``  SGLang-compatible scoring API (query and items as text or token ids,
  any label_token_ids, apply_softmax);
- ``/v1/rerank`` Cohere v1 / Jina / vLLM-compatible rerank API (query, documents, top_n);
- ``/v2/rerank`` Cohere v2 (``cohere.ClientV2``) and vLLM's v2 rerank.
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

MAX_LABEL_IDS = 64  # label_token_ids per /v1/score request

NonEmptyText = Annotated[Text, Field(min_length=1)]
TokenIds = Annotated[list[int], Field(min_length=1)]
MODEL = Field(
    default=None,
    description="name, name:version or name@label (default: the server's default label)",
)
USER = Field(
    default=None,
    max_length=256,
    description="a stable member id: picks the A/B arm (sticky) where a label splits traffic "
    "(the routing-key header wins)",
)
INSTRUCTION = Field(
    default=None,
    description="replaces the template's default instruction; only for models whose prompt "
    "template has an {instruction} placeholder (else 422)",
)


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
    instruction: str | None = INSTRUCTION
    model: str | None = MODEL
    user: str | None = USER


class RankResult(BaseModel):
    index: int = Field(description="position of the item in the request")
    score: float = Field(
        description="the probability of engagement: P(yes) / (P(yes) + P(no)), calibrated where "
        "the model has a score calibrator"
    )
    score_raw: float = Field(
        description="the model's own P(yes) / (P(yes) + P(no)), before calibration (equal to "
        "score without a calibrator); the ranking follows it"
    )


class RankResponse(BaseModel):
    model: str
    version: str = Field(description="the model version that answered")
    request_id: str = Field(description="as in X-Request-Id")
    results: list[RankResult]
    usage: Usage


# ---- SGLang-compatible ------------------------------------------------------------------------
class ScoreRequest(_Strict):
    query: NonEmptyText | TokenIds = Field(
        description="text (templated) or token ids (used as given)"
    )
    items: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(description="text (one string or a list) or token-id lists; same kind as the query")
    label_token_ids: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LABEL_IDS,
        description="token ids to report a probability for (default: the model's [yes, no])",
    )
    apply_softmax: bool = Field(
        default=False,
        description="true: normalise over label_token_ids; false (SGLang's default): each "
        "id's probability over the whole vocabulary",
    )
    item_first: bool = Field(default=False, description="item before query (not supported: 422)")
    instruction: str | None = INSTRUCTION
    model: str | None = MODEL
    user: str | None = USER


class ScoreResponse(BaseModel):
    scores: list[list[float]] = Field(description="per item: a value per label token id")
    model: str
    request_id: str = Field(description="as in X-Request-Id")
    usage: Usage
    object: Literal["scoring"] = "scoring"


# ---- Cohere / Jina / vLLM rerank --------------------------------------------------------------
class RerankDocument(BaseModel):
    text: Text


class RerankRequest(_Strict):
    query: Text = Field(min_length=1)
    documents: list[Text | RerankDocument] = Field(
        min_length=1, description='strings or {"text": ...} objects'
    )
    top_n: int | None = Field(default=None, ge=0, description="0 or absent: all documents")
    return_documents: bool = False
    instruction: str | None = INSTRUCTION
    model: str | None = MODEL
    user: str | None = USER
    # vLLM's field (its benchmark client always sends -1). Prompts are never truncated here:
    # a too-long query or item is a 422 naming the limit, so only "no truncation" is accepted.
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=-1, le=-1, description="only -1 / null (no truncation) is supported"
    )

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankV2Request(RerankRequest):
    """Cohere v2 (``cohere.ClientV2.rerank``): the v1 fields plus ``max_tokens_per_doc``."""

    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="documents are never truncated: one longer than this (in tokens) is a 422",
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens of all prompts (query counted once per item)")
    total_tokens: int


class RerankResponse(BaseModel):
    id: str = Field(description="the request id, as in X-Request-Id")
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class RerankMeta(BaseModel):
    api_version: dict = Field(default_factory=lambda: {"version": "2"})
    billed_units: dict = Field(description="search_units: 1 per request, as Cohere bills")


class RerankV2Response(RerankResponse):
    meta: RerankMeta


# ---- misc -----------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str = Field(description="name:version, as a request's model field takes it")
    object: Literal["model"] = "model"
    owned_by: str = "slimrank"
    name: str
    version: str
    state: Literal["loading", "ready", "failed", "unloading"]
    error: str | None = Field(default=None, description="why it failed to load")
    labels: list[str] = Field(description="labels that send it traffic")
    format: str
    engine: str
    kernel: str = Field(description="what the linear layers compute on (int8 fbgemm, fp32, ...)")
    kernel_reason: str = Field(description="why that kernel: the load-time measurement")
    parameters: int | None
    memory_bytes: int | None = Field(description="resident memory it added when it loaded")
    load_seconds: float | None = Field(description="load and warm-up time")
    max_items: int
    label_tokens: list[str]
    calibrator: str | None = Field(
        default=None, description="the score calibrator applied to `score` (platt / isotonic)"
    )
    score_reference: bool = Field(
        default=False, description="whether the checkpoint has a score reference (drift PSI)"
    )


class LabelCard(BaseModel):
    model: str
    label: str
    arms: dict[str, float] = Field(description="version -> weight (one version: a plain label)")
    shadow: str | None = None
    shadow_percent: float | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    labels: list[LabelCard] = Field(default_factory=list)
    default: str = Field(default="", description="what a request without model gets")


class ErrorDetail(BaseModel):
    type: str
    message: str
    request_id: str | None = Field(default=None, description="as in X-Request-Id")


class ErrorResponse(BaseModel):
    error: ErrorDetail
