"""One entry point for every decoder: ``decode(model, input_ids, attention_mask, config=, decoder=, generator=)``.

``DecodeConfig`` holds the sampler parameters (Dream names), ``DecoderConfig`` picks the decoder and its speed
options. Every decoder yields the same ``DecodeStep`` events, so stats, traces, the live view (``on_step``) and
early EOS are handled once, by ``steps.run_steps``:

- ``reference`` → ``reference.denoise_stream`` (or ``lossless.lossless_stream`` with ``lossless``, or
  ``revise.revise_stream`` with ``revise``: remasking or token editing);
- ``blocks`` / ``parallel`` → ``blocks.block_stream`` (with the optional prefix/dual KV cache), or, for a
  block-diffusion model (``model.config.block_size`` set), ``block_causal.exact_block_stream`` (the same commit
  rules over an exact KV cache); such a model runs no other decoder (a clear ``ConfigError``).

``decode`` builds prompt + ``max_new_tokens`` masks; ``decode_canvas`` takes a canvas with masks anywhere
(infilling, several spans) and runs the same decoders over it.

Early EOS (``early_stop``): see ``unmask.decoding.steps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch

from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults, check_pairing
from unmask.decoding.block_causal import check_block_decoder, check_suffix, exact_block_stream
from unmask.decoding.blocks import LogitsProbe, block_stream
from unmask.decoding.canvas import check_canvas
from unmask.decoding.eos import default_stop_ids
from unmask.decoding.lossless import lossless_stream
from unmask.decoding.reference import denoise_stream, require_mask_id
from unmask.decoding.revise import revise_stream
from unmask.decoding.steps import DecodeResult, DecodeStats, DecodeStep, run_steps
from unmask.errors import ConfigError


def decode_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None, *, config: DecodeConfig,
                  decoder: DecoderConfig, region_start: int, mask_token_id: int,
                  generator: torch.Generator | None = None, probe: LogitsProbe | None = None,
                  stop_ids: tuple[int, ...] = (), logprobs: int | None = None) -> Iterator[DecodeStep]:
    """The chosen decoder's stream of steps over a canvas whose masks start at ``region_start``; ``logprobs`` = k
    adds each commit's log-probability and k alternatives to the steps (``DecodeStep.logprobs``)."""
    check_pairing(config, decoder)
    block_causal = getattr(model.config, "block_size", None) is not None
    if block_causal:
        check_block_decoder(model.config, decoder)
    common = dict(config=config, mask_token_id=mask_token_id, generator=generator, stop_ids=stop_ids,
                  logprobs=logprobs)
    if decoder.decoder == "reference":
        if decoder.revise != "none":
            return revise_stream(model, canvas, attention_mask, decoder=decoder, **common)
        if decoder.lossless:
            return lossless_stream(model, canvas, attention_mask, draft=decoder.draft, **common)
        return denoise_stream(model, canvas, attention_mask, **common)
    if block_causal:
        return exact_block_stream(model, canvas, attention_mask, decoder=decoder, region_start=region_start,
                                  probe=probe, **common)
    return block_stream(model, canvas, attention_mask, decoder=decoder, region_start=region_start, probe=probe,
                        **common)


def _settings(model, config: DecodeConfig | None, decoder: DecoderConfig | None, params: dict
              ) -> tuple[DecodeConfig, DecoderConfig, int]:
    """(sampler config, decoder, mask id) of a call: ``config`` (else the model's generation defaults) updated
    by ``params``, and ``decoder`` (else the model's recommended one; ``GenerationDefaults.of``); combinations no
    decoder can run are errors here."""
    defaults = GenerationDefaults.of(model)
    base = config or defaults.decode
    config = base.replace(**params) if params else base
    block_size = getattr(model.config, "block_size", None)
    if decoder is None and getattr(model, "decoder_defaults", None) is None and block_size is not None:
        decoder = DecoderConfig(decoder="blocks", block_length=block_size)  # the one kind it runs
    decoder = decoder or defaults.decoder
    if not isinstance(decoder, DecoderConfig):
        raise TypeError(f"decoder must be a DecoderConfig, got {type(decoder).__name__}")
    if block_size is not None:
        check_block_decoder(model.config, decoder)
    if decoder.decoder == "blocks" and config.alg == "origin":
        raise ConfigError("the blocks decoder ranks positions by confidence: use --alg maskgit_plus, topk_margin "
                          "or entropy (origin has no confidence)")
    return config, decoder, require_mask_id(model)


def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
           config: DecodeConfig | None = None, decoder: DecoderConfig | None = None,
           generator: torch.Generator | None = None, seed: int | None = None, trace: bool = False,
           on_step: Callable[[DecodeStep], None] | None = None, stop_ids: Sequence[int] | None = None,
           probe: LogitsProbe | None = None, **params) -> DecodeResult:
    """Append ``max_new_tokens`` masks to the (left-padded) prompts (B, P) and decode them.

    config: sampler parameters (default: the model's generation defaults, then ``DecodeConfig()``), updated by
        ``params``; decoder: which decoder (default: the model's recommended one, else the reference); stop_ids:
        tokens that end a row (default: the model's eos and pad); on_step: called after every step (its time
        counts in the stats).
    """
    if getattr(model, "causal", False):  # the autoregressive baseline: left to right, whatever the decoder
        base = config or GenerationDefaults.of(model).decode
        return _left_to_right(model, input_ids, attention_mask, config=base.replace(**params) if params else base,
                              generator=_generator(model, generator, seed), stop_ids=stop_ids)
    config, decoder, mask_id = _settings(model, config, decoder, params)
    check_canvas(input_ids, attention_mask)
    stops = tuple(stop_ids) if stop_ids is not None else default_stop_ids(model.config)
    if decoder.early_stop and not stops:
        raise ConfigError("early_stop needs stop ids: the model config has no eos_token_id or pad_token_id")
    batch, prompt_len = input_ids.shape
    device = model.device
    masks = torch.full((batch, config.max_new_tokens), mask_id, dtype=torch.long, device=device)
    canvas = torch.cat([input_ids.to(device).long(), masks], dim=1)  # (B, P + L)
    full_mask = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        full_mask = torch.cat([attention_mask.to(device).long(), torch.ones_like(masks)], dim=1)
    stream = decode_stream(model, canvas, full_mask, config=config, decoder=decoder, region_start=prompt_len,
                           mask_token_id=mask_id, generator=_generator(model, generator, seed), probe=probe,
                           stop_ids=stops)
    early = None
    if decoder.early_stop:  # rows finished early are padded with the model's pad (its first stop id without one)
        early = (mask_id, model.config.pad_token_id if model.config.pad_token_id is not None else stops[0])
    return run_steps(stream, canvas, region_start=prompt_len, trace=trace, on_step=on_step, stop_ids=stops,
                     early_stop=early, mask_token_id=mask_id)


def _left_to_right(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, config: DecodeConfig,
                   generator: torch.Generator, stop_ids: Sequence[int] | None) -> DecodeResult:
    """A causal (qwen2) model's ``decode``: ``max_new_tokens`` tokens one per forward with a KV cache
    (``autoregressive.generate_ar``), pad after each row's first stop; no trace (there is no decode order)."""
    from unmask.autoregressive import generate_ar

    check_canvas(input_ids, attention_mask)
    stops = tuple(stop_ids) if stop_ids is not None else default_stop_ids(model.config)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else (stops[0] if stops else 0)
    start = time.perf_counter()
    ids = input_ids.to(model.device).long()
    out = generate_ar(model, ids, attention_mask, max_new_tokens=config.max_new_tokens, stop_ids=stops,
                      pad_id=pad, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                      generator=generator)
    stats = DecodeStats(forward_passes=out.forward_passes, tokens_committed=out.generated.numel(),
                        seconds=time.perf_counter() - start, useful_tokens=out.useful_tokens)
    return DecodeResult(torch.cat([ids, out.generated], dim=1), ids.shape[1], stats)


def decode_canvas(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                  config: DecodeConfig | None = None, decoder: DecoderConfig | None = None,
                  generator: torch.Generator | None = None, seed: int | None = None, trace: bool = False,
                  on_step: Callable[[DecodeStep], None] | None = None, **params) -> DecodeResult:
    """Fill every mask of ``canvas`` (B, S) — masks anywhere (infilling, several spans) — with any decoder.

    Positions that are not masks are never changed, by every decoder. ``attention_mask`` (B, S) marks real
    tokens (left padding); column 0 must be a real token in every row. No early stop: an infill canvas has
    text after the masks, so a stop token inside a span ends nothing. ``config.max_new_tokens`` is ignored
    (the canvas says how many masks there are); ``config.steps`` is the step budget (reference: exactly).
    """
    config, decoder, mask_id = _settings(model, config, decoder, params)
    check_canvas(canvas, attention_mask)
    if canvas.shape[1] < 2:
        raise ValueError("a canvas needs at least two columns: a real token at position 0 and something to fill")
    canvas = canvas.to(model.device).long()
    real = (torch.ones_like(canvas, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(model.device).bool())
    if bool(((canvas[:, 0] == mask_id) & real[:, 0]).any()):
        raise ValueError("column 0 of the canvas is a mask: position 0 must be a real token (prepend a bos)")
    full_mask = None if attention_mask is None or bool(real.all()) else real.long()
    region_start = 1
    if getattr(model.config, "block_size", None) is not None:  # a suffix of masks only; it is the block origin
        region_start = check_suffix(canvas, real, mask_id)
    stream = decode_stream(model, canvas, full_mask, config=config, decoder=decoder, region_start=region_start,
                           mask_token_id=mask_id, generator=_generator(model, generator, seed))
    return run_steps(stream, canvas, region_start=0, trace=trace, on_step=on_step, mask_token_id=mask_id)


def _generator(model, generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    """The caller's generator, or a new one on the model's device seeded with ``seed`` (default 0)."""
    if generator is not None:
        return generator
    return torch.Generator(device=model.device).manual_seed(0 if seed is None else seed)
