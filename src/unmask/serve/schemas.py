"""Request bodies of the OpenAI-compatible API, as strict pydantic models (they also make the OpenAPI schema).

Static bounds here keep absurd values out before any work is done; the limits that depend on the server
(``ServeConfig``) and on the model's context are checked in ``engine``. Every model forbids unknown fields (a
400 that names them: a field the server would ignore must not look accepted). Fields OpenAI defines that a
diffusion sampler cannot honour (penalties, ``logit_bias``, tools, …) are declared so that their neutral
values (0, null, empty) pass, and ``support`` refuses anything else with a 400 naming the field.

Diffusion extensions (all optional, pass them with the openai client's ``extra_body``):

- ``decoder``: ``reference`` (Dream sampler) | ``blocks`` (semi-AR blocks) | ``parallel`` (confidence threshold)
- ``steps``: denoising steps (default: one per masked token); ``alg``: origin | maskgit_plus | topk_margin |
  entropy; ``alg_temp``: > 0 randomises the commit order; ``top_k``; ``block_length``; ``threshold``
- ``revise``: ``none`` | ``remask`` | ``edit`` (with ``decoder: "reference"``: take back committed tokens within the
  same ``steps``, docs/sampler.md), ``revise_budget``, ``revise_per_step``, ``edit_low``, ``edit_high``
- ``stream_canvas``: with ``stream``, each chunk also carries ``unmask.canvas`` (the generated region's token
  texts, null where still masked) and ``unmask.committed`` (region indices committed at that step)

Masks anywhere: ``<|mask|>`` (one token) or ``<|mask:N|>`` (N tokens) in a prompt or chat message are
filled in place, by any decoder (default: the reference sampler); ``unmask.filled`` in the response lists what
each placeholder became. A malformed placeholder (``<|mask:0|>``, ``<|mask:x|>``) is a 400, as in the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Finite = Annotated[float, Field(allow_inf_nan=False)]
MAX_PROMPT_CHARS = 400_000  # the body cap binds first; this keeps the schema honest
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(max_length=MAX_PROMPT_CHARS)]
Text = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Name = Annotated[str, Field(max_length=256)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
Texts = Annotated[list[Text], Field(max_length=1024)]
TokenBatch = Annotated[list[TokenIds], Field(max_length=1024)]
Parts = Annotated[list[dict[str, Any]], Field(max_length=1024)]
STRICT = ConfigDict(strict=True, extra="forbid")


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool | None = None  # a last chunk with ``usage`` and no choices
    include_obfuscation: bool | None = None  # OpenAI's random padding of chunks: not implemented (true is a 400)


class DiffusionParams(BaseModel):
    """Sampling fields shared by every generation endpoint (OpenAI's plus the diffusion extensions)."""

    model_config = STRICT

    model: Name | None = None
    max_tokens: int | None = Field(default=None, ge=0, le=1_000_000, description="masked tokens appended")
    temperature: Finite | None = Field(default=None, ge=0, le=100)
    top_p: Finite | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1024)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(default=None)
    stream: bool = False
    decoder: Literal["reference", "blocks", "parallel"] | None = None
    steps: int | None = Field(default=None, ge=1, le=1_000_000)
    alg: Literal["origin", "maskgit_plus", "topk_margin", "entropy"] | None = None
    alg_temp: Finite | None = Field(default=None, ge=0, le=1000)
    top_k: int | None = Field(default=None, ge=1, le=1_000_000)
    block_length: int | None = Field(default=None, ge=1, le=1_000_000)
    threshold: Finite | None = Field(default=None, gt=0, le=1)
    revise: Literal["none", "remask", "edit"] | None = None
    revise_budget: int | None = Field(default=None, ge=0, le=1_000_000)
    revise_per_step: int | None = Field(default=None, ge=1, le=1_000_000)
    edit_low: Finite | None = Field(default=None, gt=0, lt=1)
    edit_high: Finite | None = Field(default=None, gt=0, lt=1)
    stream_canvas: bool = False


class OpenAIParams(DiffusionParams):
    """OpenAI fields of both completion endpoints that only have a neutral value here (``support`` checks them)."""

    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Finite] | None = Field(default=None, max_length=1024)
    user: Name | None = None  # an end-user id for the caller's records: no effect on the output


class CompletionRequest(OpenAIParams):
    # one prompt (text or token ids) or a batch of them: one choice per prompt × n
    prompt: Text | Texts | TokenIds | TokenBatch
    echo: bool = False
    suffix: Text | None = None  # text after the completion: the completion is then an infilled middle
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=1024)


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | Parts | None = None  # a string, or a list of text parts
    name: Name | None = None
    # what an assistant message handed back by a client may carry; refused unless empty (``support``)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Name | None = None
    function_call: dict[str, Any] | None = None
    refusal: Text | None = None
    audio: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] | None = None


class ChatRequest(OpenAIParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=0, le=1_000_000)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    service_tier: str | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: Name | None = None  # a caching hint: no effect on the output
    safety_identifier: Name | None = None  # an end-user id for the caller's records: no effect on the output


class InfillRequest(DiffusionParams):
    """Fill-in-the-middle: ``prefix`` + ``max_tokens`` masks + ``suffix``; the response text is the middle."""

    prefix: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    suffix: str = Field(default="", max_length=MAX_PROMPT_CHARS)


class TokenizeRequest(BaseModel):
    """``POST /tokenize``: the ids of a prompt, or of a chat formatted with the model's template."""

    model_config = STRICT

    model: Name | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
