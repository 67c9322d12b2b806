"""An lm-evaluation-harness model named ``unmask``: any lm-eval task on an unmask/Dream model directory.

    python -m unmask.lm_eval --model unmask --model_args pretrained=models/unmask-small --tasks TASK
    # or, in Python: import unmask.lm_eval, then lm_eval.simple_evaluate(model="unmask", model_args=…, …)

lm-eval finds plugin models only in its registry (it reads no entry points), so this module registers the model
when it is imported, and ``python -m unmask.lm_eval`` is lm-eval's own command line with it registered.

- ``generate_until``: the prompts are tokenised (a bos first with ``add_bos_token``), left-padded and decoded by
  ``unmask.decoding.dispatch.decode`` with the model's recommended sampler and decoder (its
  generation_config.json, as the ``unmask`` verbs), then cut at the first ``until`` string. A request's
  ``max_gen_toks`` sets the masks appended and scales ``steps`` to keep the configured tokens per step;
  ``temperature``, ``top_p``, ``top_k`` apply to the request; ``do_sample=False`` means temperature 0.
- ``loglikelihood``: the Monte-Carlo ELBO of ``unmask.likelihood`` (``mc_num`` samples); ``is_greedy`` is
  whether one forward over the context + a fully masked continuation gives it back by argmax.
- ``loglikelihood_rolling``: the same ELBO over the whole text, after one prefix token (bos with
  ``add_bos_token``, else eos); texts longer than the model's context are refused, not windowed.

Randomness: every loglikelihood request gets a CPU generator seeded with ``seed`` alone, so its estimate does not
depend on which other requests are in the run, and the choices of a multiple-choice question (same context,
same length) are scored on the same times and masks — common random numbers, which make their comparison less
noisy than their values. ``generate_until`` draws from one generator per call, seeded with ``seed``.
Prompts longer than the room the model's ``max_position_embeddings`` leaves are cut from the left, as lm-eval's
own models do. One process, one device: no data parallelism.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models: get_model skips registering them once ours is in)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

import unmask
from unmask.checkpoint import load_generation_defaults
from unmask.config import DecodeConfig, DecoderConfig, Settings, check_ints, check_numbers, doc
from unmask.decoding.canvas import left_pad
from unmask.decoding.dispatch import decode
from unmask.editing.infill import scaled_steps
from unmask.errors import ConfigError
from unmask.likelihood import continuation_elbo, greedy_reproduces
from unmask.serve.text import cut_at_stop_text
from unmask.tokenizer import CHATML_TEMPLATE

log = logging.getLogger(__name__)

# gen_kwargs a request may carry; others (num_beams, …) have no meaning for a diffusion decoder and are ignored
REQUEST_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
IGNORED_ARGS = ("max_batch_size",)  # lm-eval passes it to every model; batches here are fixed


@dataclass(frozen=True)
class LMEvalConfig(Settings):
    """The ``unmask`` lm-eval model's own ``model_args``; the sampler and decoder settings are the fields of
    ``DecodeConfig`` and ``DecoderConfig``, defaulting to the model's generation_config.json."""

    _what = "the unmask lm-eval model's"

    pretrained: str = field(default="", metadata=doc("model directory (Hugging Face Dream format)"))
    dtype: str = field(default="auto", metadata=doc("auto (float32 on CPU, as stored on GPU) | float32 | bfloat16"))
    device: str = field(default="cpu", metadata=doc("cpu, cuda, cuda:1 …"))
    batch_size: int = field(default=1, metadata=doc("prompts decoded together by generate_until"))
    add_bos_token: bool = field(default=False, metadata=doc("prepend the tokenizer's bos to every context"))
    mc_num: int = field(default=128, metadata=doc("Monte-Carlo samples of the loglikelihood ELBO (Dream: 128)"))
    mc_batch_size: int = field(default=32, metadata=doc("ELBO samples per forward"))
    mc_eps: float = field(default=1e-3, metadata=doc(
        "smallest diffusion time of the ELBO's draws (Dream: 1e-3); `eps` is the sampler's"))
    seed: int = field(default=0, metadata=doc("seed of the ELBO draws and of generation"))

    def __post_init__(self) -> None:
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ConfigError("model_args needs pretrained=DIR, an unmask/Dream model directory")
        check_ints(self, ("batch_size", "mc_num", "mc_batch_size"))
        check_ints(self, ("seed",), minimum=0)
        check_numbers(self, ("mc_eps",), "(0, 1)")
        if not isinstance(self.add_bos_token, bool):
            raise ConfigError(f"add_bos_token must be true or false, got {self.add_bos_token!r}")


def split_model_args(values: dict[str, Any]) -> tuple[LMEvalConfig, dict[str, Any], dict[str, Any]]:
    """(our settings, DecodeConfig changes, DecoderConfig changes) from lm-eval's parsed ``model_args`` (and the
    ``batch_size``/``device`` it adds); an unknown name is a ``ConfigError`` that lists the known ones."""
    names = [{f.name for f in dataclasses.fields(cls)} for cls in (LMEvalConfig, DecodeConfig, DecoderConfig)]
    values = {k: v for k, v in values.items() if k not in IGNORED_ARGS}
    unknown = sorted(set(values) - set().union(*names))
    if unknown:
        known = ", ".join(sorted(set().union(*names)))
        raise ConfigError(f"unknown model_args for unmask: {', '.join(unknown)} (known: {known})")
    if isinstance(values.get("batch_size"), str):  # lm-eval's --batch_size arrives as text
        text = values["batch_size"]
        if not text.isdigit():
            raise ConfigError(f"batch_size must be a positive integer, got {text!r} (auto is not supported)")
        values["batch_size"] = int(text)
    ours, sampler, decoder = ({k: v for k, v in values.items() if k in n} for n in names)
    return LMEvalConfig(**ours), sampler, decoder


@register_model("unmask")
class UnmaskLM(TemplateLM):
    """lm-eval's view of an unmask model: text in, text or log-likelihoods out (module docstring)."""

    def __init__(self, pretrained: str = "", **model_args: Any) -> None:
        super().__init__()
        self.settings, sampler, decoder = split_model_args({"pretrained": str(pretrained), **model_args})
        self.model, self.tokenizer = unmask.load(self.settings.pretrained, dtype=self.settings.dtype,
                                                 device=self.settings.device)
        if self.model.causal:
            raise ConfigError(f"{self.settings.pretrained} is a causal (qwen2) checkpoint: evaluate it with "
                              "lm-eval's own `hf` model; `unmask` is for diffusion models")
        if self.settings.add_bos_token and self.tokenizer.special.bos is None:
            raise ConfigError("add_bos_token=True, but the tokenizer has no bos token")
        self.decode, self.decoder = load_generation_defaults(self.settings.pretrained).updated(sampler, decoder)
        self._device = self.model.device

    # -- tokens ------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.special.eos

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes (lm-eval's convention: a single bos or eos)."""
        return self.tokenizer.special.bos if self.settings.add_bos_token else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string``; a bos first when ``add_special_tokens`` (None: ``add_bos_token``), unless
        the text already starts with it."""
        ids = self.tokenizer.encode(string)
        bos = self.tokenizer.special.bos
        with_bos = self.settings.add_bos_token if add_special_tokens is None else add_special_tokens
        if with_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def fit_context(self, context: list[int], new_tokens: int) -> list[int]:
        """The end of ``context`` that fits before ``new_tokens`` in the model's context (lm-eval's models cut
        from the left too), or a ``ConfigError`` when nothing of it would fit."""
        room = self.max_length - new_tokens
        if room < 1:
            raise ConfigError(f"{new_tokens} tokens to generate or score leave no room for a context in the "
                              f"model's max_position_embeddings ({self.max_length})")
        return context[-room:]

    # -- loglikelihood -----------------------------------------------------------------------------------
    def score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(ELBO of the continuation, is_greedy) with a generator seeded from ``seed`` alone (module docstring)."""
        context = self.fit_context(context, len(continuation))
        generator = torch.Generator().manual_seed(self.settings.seed)  # CPU: the same draws on any device
        elbo = continuation_elbo(self.model, context, continuation, generator=generator, mc_num=self.settings.mc_num,
                                 mc_batch_size=self.settings.mc_batch_size, eps=self.settings.mc_eps)
        return elbo, greedy_reproduces(self.model, context, continuation)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        results = []
        for key, context, continuation in tqdm(requests, desc="unmask loglikelihood", disable=disable_tqdm):
            result = self.score(list(context), list(continuation))
            self.cache_hook.add_partial("loglikelihood", key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, desc="unmask loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            if 1 + len(tokens) > self.max_length:
                raise ConfigError(f"a text of {len(tokens)} tokens does not fit the model's max_position_embeddings "
                                  f"({self.max_length}); loglikelihood_rolling scores whole texts, without windows")
            elbo, _ = self.score([self.prefix_token_id], tokens)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), elbo)
            results.append(elbo)
        return results

    # -- generation --------------------------------------------------------------------------------------
    def request_settings(self, gen_kwargs: dict[str, Any]) -> tuple[DecodeConfig, list[str]]:
        """(sampler settings, stop strings) of one request's gen_kwargs on top of the model's settings."""
        unknown = sorted(set(gen_kwargs) - set(REQUEST_KEYS))
        if unknown:
            log.warning("unmask ignores these generation kwargs: %s", ", ".join(unknown))
        until = gen_kwargs.get("until") or []
        changes: dict[str, Any] = {}
        if gen_kwargs.get("max_gen_toks") is not None:
            length = int(gen_kwargs["max_gen_toks"])
            changes.update(max_new_tokens=length, steps=scaled_steps(self.decode, length))
        if gen_kwargs.get("temperature") is not None:
            changes["temperature"] = float(gen_kwargs["temperature"])
        if gen_kwargs.get("do_sample") is False:  # lm-eval's greedy request, whatever the temperature says
            changes["temperature"] = 0.0
        if "top_p" in gen_kwargs:
            changes["top_p"] = gen_kwargs["top_p"]
        if "top_k" in gen_kwargs:
            changes["top_k"] = gen_kwargs["top_k"] or None  # HF's top_k=0 means no filter
        return self.decode.replace(**changes), [until] if isinstance(until, str) else list(until)

    def generate(self, contexts: Sequence[str], config: DecodeConfig, generator: torch.Generator) -> list[str]:
        """Decode the contexts together (left-padded) and return each row's text (cut at the first stop token)."""
        prompts = [self.fit_context(self.tok_encode(c) or [self.prefix_token_id], config.max_new_tokens)
                   for c in contexts]
        special = self.tokenizer.special
        ids, mask, _ = left_pad(prompts, special.pad, device=self.model.device)
        result = decode(self.model, ids, mask, config=config, decoder=self.decoder, generator=generator,
                        stop_ids=special.stop_ids())
        return [self.tokenizer.decode(row) for row in result.generated.tolist()]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same gen_kwargs are decoded ``batch_size`` at a time, in their order."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        generator = torch.Generator(device=self.model.device).manual_seed(self.settings.seed)
        results = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="unmask generate_until", disable=disable_tqdm)
        for indices in groups.values():
            config, until = self.request_settings(requests[indices[0]].args[1])
            for lo in range(0, len(indices), self.settings.batch_size):
                chunk = indices[lo:lo + self.settings.batch_size]
                texts = self.generate([requests[i].args[0] for i in chunk], config, generator)
                for i, text in zip(chunk, texts):
                    results[i] = cut_at_stop_text(text, until)[0]
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                bar.update(len(chunk))
        bar.close()
        return results

    # -- chat and records --------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.settings.pretrained.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return (self.tokenizer.chat_template or CHATML_TEMPLATE) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def get_model_info(self) -> dict[str, Any]:
        """The resolved settings, recorded in lm-eval's results under ``config``."""
        return {"unmask": {"settings": self.settings.to_dict(), "decode": self.decode.to_dict(),
                           "decoder": self.decoder.to_dict()}}


def main() -> None:
    """``python -m unmask.lm_eval …``: lm-eval's own command line with the ``unmask`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
