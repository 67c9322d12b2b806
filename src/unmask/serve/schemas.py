"""Request bodies of the OpenAI-compatible API, as strict pydantic models (they also make the OpenAPI schema).

Static bounds here keep absurd values out before any work is done; the limits that depend on the server
(``ServeConfig``) and on the model's context are checked in ``app``. Fields OpenAI defines that the server
does not use (``user``, ``frequency_penalty``, …) are accepted and ignored, so unmodified clients work.

Diffusion extensions (all optional, pass them with the openai client's ``extra_body``):

- ``decoder``: ``reference`` (Dream sampler) | ``blocks`` (semi-AR blocks) | ``parallel`` (confidence threshold)
- ``steps``: denoising steps (default: one per masked token); ``alg``: origin | maskgit_plus | topk_margin |
  entropy; ``alg_temp``: > 0 randomises the commit order; ``top_k``; ``block_length``; ``threshold``
- ``stream_canvas``: with ``stream``, each chunk also carries ``unmask.canvas`` (the generated region's token
  texts, null where still masked) and ``unmask.committed`` (region indices committed at that step)

Masks anywhere: ``<|mask|>`` (one token) or ``<|mask:N|>`` (N tokens) in a prompt or chat message are
filled in place, by any decoder (default: the reference sampler); ``unmask.filled`` in the response lists what
each placeholder became. A malformed placeholder (``<|mask:0|>``, ``<|mask:x|>``) is a 400, as in the CLI.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Finite = Annotated[float, Field(allow_inf_nan=False)]
MAX_PROMPT_CHARS = 400_000  # the body cap binds first; this keeps the schema honest


class DiffusionParams(BaseModel):
    """Sampling fields shared by every generation endpoint (OpenAI's plus the diffusion extensions)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = Field(default=None, max_length=256)
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
    stream_canvas: bool = False


class CompletionRequest(DiffusionParams):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatRequest(DiffusionParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class InfillRequest(DiffusionParams):
    """Fill-in-the-middle: ``prefix`` + ``max_tokens`` masks + ``suffix``; the response text is the middle."""

    prefix: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    suffix: str = Field(default="", max_length=MAX_PROMPT_CHARS)
