"""The tokens a response returns, and their log-probabilities in OpenAI's two shapes.

A diffusion decoder commits tokens in any order, so "the log-probability of a token" is defined at the step
that committed it: log p(token) under the distribution that step sampled it from (after temperature, top-p
and top-k; at temperature 0 the softmax whose argmax was taken), and the top alternatives of that same
distribution (``decoding.steps.commit_logprobs``). It is not the left-to-right probability an
autoregressive model reports: tokens to the right may already have been committed (docs/sampler.md).

The returned tokens are the fewest leading tokens of the reply whose text covers the response text (a stop
sequence may end inside a token): ``usage.completion_tokens`` counts them and the log-probs list them.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence

from unmask.serve.scheduler import TokenLogprob

FLOOR = -9999.0  # log-probs of filtered-out tokens (about -3.4e38) are reported as this, as JSON has no -inf


def returned_tokens(ids: Sequence[int], text: str, decode: Callable[[Sequence[int]], str]) -> int:
    """The smallest n whose ``decode(ids[:n])`` starts with ``text`` (``text`` is a prefix of ``decode(ids)``)."""
    lo, hi = 0, len(ids)
    while lo < hi:  # binary search: covering the text is monotone in n
        mid = (lo + hi) // 2
        if decode(ids[:mid]).startswith(text):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _value(x: float) -> float:
    return max(float(x), FLOOR)


def chat_logprobs(tokenizer, ids: Sequence[int], scores: Sequence[TokenLogprob], top: int) -> dict:
    """``choices[i].logprobs`` of a chat completion: one entry per returned token with ``top`` alternatives."""
    texts = tokenizer.token_texts(ids)
    raw = tokenizer.token_bytes(ids)
    alternatives = sorted({t for s in scores for t, _ in s.top[:top]})
    alt_text = dict(zip(alternatives, tokenizer.token_texts(alternatives)))
    alt_bytes = dict(zip(alternatives, tokenizer.token_bytes(alternatives)))
    content = []
    for text, data, score in zip(texts, raw, scores):
        content.append({"token": text, "logprob": _value(score.logprob), "bytes": list(data),
                        "top_logprobs": [{"token": alt_text[t], "logprob": _value(v), "bytes": list(alt_bytes[t])}
                                         for t, v in score.top[:top]]})
    return {"content": content, "refusal": None}


def legacy_logprobs(tokenizer, ids: Sequence[int], scores: Sequence[TokenLogprob], top: int) -> dict:
    """``choices[i].logprobs`` of a completion (OpenAI's legacy shape): per token its text, its log-prob, a map
    of the ``top`` likeliest tokens plus the chosen one, and its character offset in the choice's text."""
    tops = []
    for token, score in zip(ids, scores):
        alternatives = dict(score.top[:top])
        alternatives.setdefault(token, score.logprob)
        names = dict(zip(alternatives, tokenizer.token_texts(list(alternatives))))
        tops.append({names[t]: _value(v) for t, v in alternatives.items()})
    return {"tokens": tokenizer.token_texts(ids), "token_logprobs": [_value(s.logprob) for s in scores],
            "top_logprobs": tops, "text_offset": text_offsets(tokenizer.token_bytes(ids))}


def text_offsets(pieces: Sequence[bytes]) -> list[int]:
    """Where each token starts in the decoded text, in characters (a character split over tokens belongs to
    the token that completes it)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, length = [], 0
    for piece in pieces:
        offsets.append(length)
        length += len(decoder.decode(piece))
    return offsets
