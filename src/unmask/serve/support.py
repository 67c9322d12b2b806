"""Which OpenAI request fields the server honours, and a 400 naming each one it cannot (never a silent drop).

Honoured: ``model`` (the served name, else 404), ``prompt`` (text, token ids, or a batch of either),
``messages`` (string content or text parts), ``max_tokens`` / ``max_completion_tokens``, ``n``, ``seed``,
``stop``, ``stream``, ``stream_options.include_usage``, ``temperature``, ``top_p``, ``echo``, ``suffix``,
``logprobs`` / ``top_logprobs`` (the log-probability at commit: docs/sampler.md), ``best_of`` equal to ``n``.
Accepted because they cannot change the output: ``user``, ``safety_identifier``, ``prompt_cache_key``,
``metadata``, ``parallel_tool_calls``, ``store: false``, ``service_tier`` auto/default.
Refused unless neutral (0, null, empty, ``{"type": "text"}``, ``"none"``/``"auto"`` without tools): penalties,
``logit_bias``, ``response_format``, tools and functions, audio, predictions, reasoning and web search.
"""

from __future__ import annotations

from unmask.serve.errors import ClientError
from unmask.serve.schemas import ChatMessage, ChatRequest, CompletionRequest, OpenAIParams

NO_TOOLS = "is not supported: this model has no tool or function calling"
ABSENT = {  # chat fields that must be null, and why
    "audio": "is not supported: this model reads and writes text only",
    "prediction": "is not supported by a diffusion sampler",
    "web_search_options": "is not supported: the server has no web search",
    "reasoning_effort": "is not supported: this model has no reasoning mode",
    "verbosity": "is not supported: the length is set by max_tokens",
}
TEXT_ONLY_PARTS = ("image_url", "input_audio", "file", "refusal")


def refused(field: str, why: str) -> ClientError:
    return ClientError(f"{field} {why}", param=field, code="unsupported_parameter")


def check_model(name: str | None, served: str) -> None:
    """A request may omit ``model``; naming another model is OpenAI's 404 (the name is not echoed back)."""
    if name is not None and name != served:
        raise ClientError(f"the requested model does not exist: this server serves '{served}'", 404,
                          param="model", code="model_not_found")


def check_common(req: OpenAIParams) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise refused(name, "is not supported by a diffusion sampler (only 0 is accepted)")
    if req.logit_bias:
        raise refused("logit_bias", "is not supported by this server (only an empty map is accepted)")
    if req.stream_options is not None:
        if not req.stream:
            raise refused("stream_options", "is only allowed when stream is true")
        if req.stream_options.include_obfuscation:
            raise refused("stream_options.include_obfuscation", "is not supported (only false is accepted)")


def check_completion(req: CompletionRequest) -> None:
    check_common(req)
    if req.best_of is not None and req.best_of != req.n:
        raise refused("best_of", "is not supported: a diffusion decode has no sequence score to rank choices by "
                                 "(only best_of equal to n is accepted)")
    if req.echo:
        for name, value in (("stream", req.stream), ("logprobs", req.logprobs is not None),
                            ("suffix", req.suffix is not None)):
            if value:
                raise ClientError(f"echo is not supported together with {name}", param="echo")


def check_chat(req: ChatRequest) -> None:
    check_common(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise ClientError("top_logprobs needs logprobs: true", param="top_logprobs")
    if req.response_format is not None and req.response_format != {"type": "text"}:
        raise refused("response_format", 'is not supported: only {"type": "text"} is accepted')
    for name in ("tools", "functions"):
        if getattr(req, name):
            raise refused(name, NO_TOOLS)
    for name in ("tool_choice", "function_call"):
        if getattr(req, name) not in (None, "none", "auto"):
            raise refused(name, NO_TOOLS)
    if req.store:
        raise refused("store", "is not supported: the server keeps no completions")
    if req.modalities not in (None, ["text"]):
        raise refused("modalities", 'is not supported: only ["text"] is accepted')
    if req.service_tier not in (None, "auto", "default"):
        raise refused("service_tier", "is not supported: only auto and default are accepted")
    for name, why in ABSENT.items():
        if getattr(req, name) is not None:
            raise refused(name, why)


def chat_max_tokens(req: ChatRequest) -> int | None:
    """``max_completion_tokens`` (OpenAI's current name) or ``max_tokens`` (the older one); both must agree."""
    new, old = req.max_completion_tokens, req.max_tokens
    if new is not None and old is not None and new != old:
        raise ClientError("max_tokens and max_completion_tokens differ: give one of them",
                          param="max_completion_tokens")
    return new if new is not None else old


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The messages as the chat template takes them: text content, ``developer`` read as ``system``."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
            for i, m in enumerate(messages)]


def message_text(message: ChatMessage, index: int) -> str:
    where = f"messages[{index}]"
    if message.role in ("tool", "function"):
        raise refused(f"{where}.role", f"{message.role} {NO_TOOLS}")
    if message.name is not None:
        raise refused(f"{where}.name", "is not supported: the chat template has no participant names")
    for name in ("tool_calls", "tool_call_id", "function_call", "refusal", "audio", "annotations"):
        if getattr(message, name):
            raise refused(f"{where}.{name}", "is not supported: only text content is read")
    if message.content is None:
        raise ClientError(f"{where}.content is required", param=f"{where}.content")
    if isinstance(message.content, str):
        return message.content
    return "".join(part_text(part, f"{where}.content[{k}]") for k, part in enumerate(message.content))


def part_text(part: dict, where: str) -> str:
    """A content part's text (parts are joined with nothing between them); any other part is a 400."""
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str) and set(part) == {"type", "text"}:
        return part["text"]
    if kind in TEXT_ONLY_PARTS:
        raise refused(f"{where}.type", f"{kind} parts are not supported: this model reads text only")
    raise ClientError(f"{where} must be a text part, {{\"type\": \"text\", \"text\": ...}}", param=where)
