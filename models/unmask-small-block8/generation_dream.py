"""``model.diffusion_generate``: Dream-style masked-diffusion sampling for the remote-code ``DreamModel``.

Remote code written for unmask (imports torch and transformers only). It takes the call of Dream's
``diffusion_generate`` — the same arguments — and runs one of two samplers:

- ``dream_compat=True``, the default: Dream's own sampler as it runs on transformers 4.46, to the bit (unmask
  docs/sampler.md, "Dream-compatible mode"), since the code that calls this method was written for Dream's. A
  ``top_k`` / ``top_p`` that neither the call nor the generation config sets is Dream's implicit 50 / 1.0; the
  mask token stays in the softmax (a position that draws it stays masked); arithmetic in the logits' dtype;
  token draws as ``torch.distributions.Categorical`` makes them; one reveal count for the batch, from its mean
  number of masks; with ``alg_temp`` > 0 the order drawn by ``torch.multinomial``.
- ``dream_compat=False``: unmask's reference sampler (``unmask.decoding.reference``): float32, the mask token
  never drawn, each row's own count, Gumbel-top-k for ``alg_temp``, and ``stop_last`` available; given the same
  ``torch.Generator`` its output ids equal unmask's reference decoder (``unmask.generate`` with
  ``decoder=DecoderConfig()``). It is the default where ``stop_last`` is on, as unmask's own option.

Either way, arguments not passed come from the directory's generation_config.json, then from unmask's
defaults (Dream's code reads no generation_config.json and falls back to transformers' temperature 1.0, 512
steps, alg origin and 20 new tokens), and the randomness may come from an explicit ``generator`` (default:
torch's global one, as in Dream's code).

The canvas is the prompt followed by ``max_new_tokens`` mask tokens; each of ``steps`` steps is one forward
over the whole canvas (no cache). With timesteps ``linspace(1, eps, steps + 1)`` (float32) and t, s the
current and next one:
- ``alg="origin"``: each masked position is committed with probability 1 - s/t (all at the last step), its
  token drawn from the filtered distribution;
- otherwise every masked position gets a candidate token and a confidence (``maskgit_plus`` p(x0),
  ``topk_margin`` p1 - p2, ``entropy`` sum p log p) and ``int(m * (1 - s/t))`` of ``m`` masked positions are
  committed (all at the last step): the most confident, or with ``alg_temp`` > 0 a draw without replacement
  from softmax(confidence / alg_temp).
Token distribution: logits of the masked positions / temperature (when > 0), top-p, top-k, softmax; then a
draw (temperature > 0) or the argmax.

A block-diffusion model (``config.block_size`` set: causal across blocks, bidirectional inside one, blocks
counted from ``block_origin`` = the prompt length) is decoded block by block instead, with unmask's ``blocks``
rule as its exact block decoder runs it (``unmask.decoding.block_causal``): blocks of ``block_size`` from the
prompt's end (the last may be shorter), each fully committed before the next, in ``max(1, steps // blocks)``
steps with LLaDA's per-step counts; each step commits the most confident masks of the block by ``alg``
(Gumbel-top-k with ``alg_temp``), always in unmask's arithmetic (``alg="origin"`` and ``dream_compat=True``
are errors). Given the same ``torch.Generator`` its ids equal unmask's, to float rounding: each step is one
forward over the canvas up to the end of the current block, with no KV cache (exact, since a finished block
never changes, but slower than unmask's cached decoder).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import transformers
from transformers import GenerationConfig
from transformers.utils import ModelOutput

# unmask's DecodeConfig defaults: what a call gets when neither it nor the generation config says otherwise
# (dream_compat None: on unless stop_last is).
SAMPLER_DEFAULTS = {"max_new_tokens": 256, "steps": 256, "temperature": 0.0, "top_p": None, "top_k": None,
                    "alg": "entropy", "alg_temp": 0.0, "eps": 1e-3, "stop_last": False, "dream_compat": None}
# What Dream's call uses for a top_k / top_p left out, on transformers 4.46: the 4.x model config's defaults.
DREAM_IMPLICIT_TOP_K, DREAM_IMPLICIT_TOP_P = 50, 1.0
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
# A stop token held back by stop_last ranks below every other masked position, leftmost first: far below any
# confidence (entropy >= -log V, probabilities and margins >= 0), yet finite so it still beats committed slots.
_DEMOTION = 1e4


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """``sequences`` (B, prompt + max_new_tokens); ``history``: the canvas after each step, when asked."""

    sequences: torch.LongTensor | None = None
    history: tuple[torch.LongTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------
# Pure step functions


def filtered_probs(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None,
                   dream: bool = False) -> torch.Tensor:
    """(N, V) logits -> probabilities after temperature, top-p (nucleus) and top-k, in that order: float32, or
    with ``dream`` in the logits' own dtype, as Dream's code computes them."""
    logits = logits if dream else logits.float()
    floor = torch.finfo(logits.dtype).min  # not -inf: a row of -inf would make softmax NaN
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        # A token goes only if the tokens ranked above it already hold more than top_p (the first one stays).
        drop = torch.zeros_like(cumulative, dtype=torch.bool)
        drop[..., 1:] = cumulative[..., :-1] > top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), floor)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, floor)  # ties with the k-th are kept
    return logits.softmax(-1)


def categorical_draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """One token per row as ``torch.distributions.Categorical(probs=probs).sample()`` (Dream's draw) makes it,
    from ``generator``: rows renormalised, one multinomial draw each. None where that class refuses the rows
    (its default check that each is a probability vector to within 1e-6): Dream then takes every argmax."""
    normalised = probs / probs.sum(-1, keepdim=True)
    if not bool(((normalised >= 0).all(-1) & ((normalised.sum(-1) - 1).abs() < 1e-6)).all()):
        return None
    return torch.multinomial(normalised, 1, replacement=True, generator=generator).squeeze(-1)


def sample_with_confidence(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None,
                           alg: str, generator: torch.Generator | None, dream: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` (N, V) and its confidence -> (x0 (N,) long, confidence (N,)), float32
    or, with ``dream``, the logits' dtype."""
    probs = filtered_probs(logits, temperature, top_p, top_k, dream)
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device), probs.new_zeros(0)
    x0 = None
    if temperature > 0:
        x0 = categorical_draw(probs, generator) if dream else torch.multinomial(probs, 1, generator=generator)[:, 0]
    if x0 is None:
        confidence, x0 = probs.max(dim=-1)
    else:
        confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
    if alg == "topk_margin":
        best_two = torch.topk(probs, 2, dim=-1).values
        confidence = best_two[:, 0] - best_two[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)  # negative entropy: higher = more certain
    return x0, confidence


def hold_back_stops(scores: torch.Tensor, candidates: torch.Tensor, masked: torch.Tensor,
                    stop_ids: tuple[int, ...]) -> torch.Tensor:
    """``stop_last``: rank last every masked position whose candidate is a stop token while a mask lies to
    its left, leftmost first, so the text is written before the end and never squeezed in after it."""
    stops = torch.isin(candidates, torch.tensor(stop_ids, dtype=candidates.dtype, device=candidates.device))
    masks = masked.long()
    mask_on_left = (masks.cumsum(-1) - masks) > 0  # (B, T)
    column = torch.arange(scores.shape[-1], device=scores.device, dtype=scores.dtype)
    return torch.where(stops & masked & mask_on_left, (-_DEMOTION * (1.0 + column)).expand_as(scores), scores)


def own_count_picks(scores: torch.Tensor, counts: list[int], alg_temp: float, generator: torch.Generator | None
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """unmask's choice: each row's own count of the highest ``scores`` (B, T), or with ``alg_temp`` > 0 draws
    without replacement from softmax(scores / alg_temp), as the top of scores / alg_temp plus Gumbel noise
    (-log of an Exp(1) draw; it cannot fail where softmax underflows). (rows, columns) per equal-count group."""
    groups: dict[int, list[int]] = {}
    for row, k in enumerate(counts):
        groups.setdefault(k, []).append(row)
    picks = []
    for k, members in groups.items():
        if k == 0:
            continue
        rows = torch.tensor(members, device=scores.device)
        row_scores = scores[rows]  # (b, T)
        if alg_temp > 0:
            noise = -torch.log(torch.empty(row_scores.shape, device=scores.device).exponential_(generator=generator))
            row_scores = row_scores / alg_temp + noise
        picks.append((rows, torch.topk(row_scores, k, dim=-1).indices))
    return picks


def batch_count_picks(scores: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: bool,
                      alg_temp: float, generator: torch.Generator | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Dream's choice: one count for every row, from the batch-mean number of masks m (float32): int(m (1 - s/t)),
    int(m) at the last step; the top of ``scores`` (B, T), or with ``alg_temp`` > 0 ``torch.multinomial``
    without replacement from softmax(scores / alg_temp). A row with fewer masks than the count gets positions
    off its masks (the mask token is written there), one with more keeps masks after the last step."""
    mean = masked.sum() / masked.shape[0]
    k = int(mean) if last else int(mean * (1 - s / t))
    if k == 0:
        return []
    rows = torch.arange(scores.shape[0], device=scores.device)
    if alg_temp > 0:
        return [(rows, torch.multinomial((scores / alg_temp).softmax(-1), k, generator=generator))]
    return [(rows, torch.topk(scores, k).indices)]


def commit_step(logits: torch.Tensor, canvas: torch.Tensor, masked: torch.Tensor, step: int,
                timesteps: torch.Tensor, settings: dict, mask_token_id: int, stop_ids: tuple[int, ...],
                generator: torch.Generator | None) -> None:
    """Commit this step's tokens into ``canvas`` (B, T) in place. logits (B, T, V) are aligned (position j's
    prediction at j); masked (B, T) bool marks the positions still to fill."""
    t, s = timesteps[step], timesteps[step + 1]
    last = step == settings["steps"] - 1
    dream = settings["dream_compat"]
    scores_logits = logits[masked]  # (N, V), a copy, masked positions in row-major order
    top_p, top_k = settings["top_p"], settings["top_k"]
    if dream:  # what Dream's call does with a filter its caller left out
        top_p = DREAM_IMPLICIT_TOP_P if top_p is None else top_p
        top_k = DREAM_IMPLICIT_TOP_K if top_k is None else top_k
    else:  # committing the mask token would leave the position masked: unmask never draws it
        scores_logits = scores_logits.float()
        scores_logits[:, mask_token_id] = torch.finfo(scores_logits.dtype).min
    draw = (settings["temperature"], top_p, top_k)

    if settings["alg"] == "origin":
        chance = 1.0 if last else float(1 - s / t)
        chosen = torch.rand(scores_logits.shape[0], generator=generator, device=canvas.device) < chance
        x0, _ = sample_with_confidence(scores_logits[chosen], *draw, "maskgit_plus", generator, dream)
        rows, cols = (index[chosen] for index in masked.nonzero(as_tuple=True))
        canvas[rows, cols] = x0
        return

    x0, confidence = sample_with_confidence(scores_logits, *draw, settings["alg"], generator, dream)
    scores = torch.full(canvas.shape, float("-inf"), dtype=confidence.dtype, device=canvas.device)
    scores[masked] = confidence
    candidates = torch.full_like(canvas, mask_token_id)  # a pick off the masked positions writes the mask
    candidates[masked] = x0
    if dream:
        picks = batch_count_picks(scores, masked, t, s, last, settings["alg_temp"], generator)
    else:
        if settings["stop_last"] and stop_ids:
            scores = hold_back_stops(scores, candidates, masked, stop_ids)
        counts = masked.sum(-1)  # (B,)
        counts = (counts if last else (counts.float() * (1 - s / t)).long()).tolist()
        picks = own_count_picks(scores, counts, settings["alg_temp"], generator)
    for rows, cols in picks:
        row_index = rows[:, None].expand_as(cols)
        canvas[row_index, cols] = candidates[row_index, cols]


# ----------------------------------------------------------------------------------------------------------
# Block-diffusion models: unmask's ``blocks`` rule (decoding/blocks.py, block_causal.py), with no cache


def block_spans(start: int, length: int, size: int) -> list[tuple[int, int]]:
    """Canvas columns [b0, b1) of the blocks of ``length`` masks from column ``start``; the last may be shorter."""
    return [(start + b, start + min(b + size, length)) for b in range(0, length, size)]


def block_schedule(masked: int, steps: int) -> list[int]:
    """Commits per step of a block of ``masked`` masks in ``steps`` steps (LLaDA's rule): ``masked // steps``
    each, one more in the first ``masked % steps``; never more steps than masks (a step must commit)."""
    steps = max(1, min(steps, masked))
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def block_settings(settings: dict, overrides: dict) -> dict:
    """The settings of a block model's decode: unmask's arithmetic always (dream_compat off); a ValueError for
    what the block rule cannot run. A dream_compat the generation config implies is overruled, not an error."""
    if overrides.get("dream_compat") is True:
        raise ValueError("dream_compat=True reproduces Dream's full-attention sampler, which a block-diffusion model "
                         "cannot run: leave it out (or pass False) to decode block by block in unmask's arithmetic")
    if settings["alg"] == "origin":
        raise ValueError("a block-diffusion model commits the most confident masks of each block: use alg "
                         "maskgit_plus, topk_margin or entropy (origin has no confidence)")
    return {**settings, "dream_compat": False}


def block_commit_step(logits: torch.Tensor, canvas: torch.Tensor, b0: int, count: int, settings: dict,
                      mask_token_id: int, stop_ids: tuple[int, ...], generator: torch.Generator | None) -> None:
    """Commit up to ``count`` masks per row of the block starting at column ``b0`` into ``canvas`` (B, S) in place.
    logits (B, n, V): the block's aligned logits. Draws from ``generator`` in unmask's order (the tokens of the
    masks in row-major order, then with ``alg_temp`` one Gumbel draw over the window, as every row commits the
    same count unless a hook changed the canvas), so seeded runs match it."""
    window = canvas[:, b0:b0 + logits.shape[1]]  # a view: writes land in the canvas
    masked = window == mask_token_id  # (B, n); the block holds no pads (those are in the prompt)
    masked_logits = logits[masked].float()  # (N, V)
    masked_logits[:, mask_token_id] = torch.finfo(masked_logits.dtype).min  # never propose the mask itself
    x0, confidence = sample_with_confidence(masked_logits, settings["temperature"], settings["top_p"],
                                            settings["top_k"], settings["alg"], generator)
    scores = torch.full(masked.shape, float("-inf"), dtype=confidence.dtype, device=canvas.device)
    scores[masked] = confidence
    candidates = torch.full_like(window, mask_token_id)
    candidates[masked] = x0
    if settings["stop_last"] and stop_ids:  # earlier blocks are full: a mask to the left lies in this one
        scores = hold_back_stops(scores, candidates, masked, stop_ids)
    counts = [min(count, left) for left in masked.sum(-1).tolist()]
    for rows, cols in own_count_picks(scores, counts, settings["alg_temp"], generator):
        row_index = rows[:, None].expand_as(cols)
        window[row_index, cols] = candidates[row_index, cols]


def check_settings(settings: dict) -> None:
    """ValueError naming the first setting out of range (as unmask's DecodeConfig does)."""
    for name in ("max_new_tokens", "steps"):
        if not isinstance(settings[name], int) or isinstance(settings[name], bool) or settings[name] <= 0:
            raise ValueError(f"{name} must be a positive integer, got {settings[name]!r}")
    if not settings["temperature"] >= 0:
        raise ValueError(f"temperature must be >= 0, got {settings['temperature']!r}")
    if settings["top_p"] is not None and not 0 < settings["top_p"] <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {settings['top_p']!r}")
    if settings["top_k"] is not None and (not isinstance(settings["top_k"], int) or settings["top_k"] <= 0):
        raise ValueError(f"top_k must be a positive integer, got {settings['top_k']!r}")
    if settings["alg"] not in ALGS:
        raise ValueError(f"alg must be one of {', '.join(ALGS)}, got {settings['alg']!r}")
    if not settings["alg_temp"] >= 0:
        raise ValueError(f"alg_temp must be >= 0, got {settings['alg_temp']!r}")
    if not 0 < settings["eps"] < 1:
        raise ValueError(f"eps must be in (0, 1), got {settings['eps']!r}")
    if not isinstance(settings["dream_compat"], bool):
        raise ValueError(f"dream_compat must be True or False, got {settings['dream_compat']!r}")
    if settings["stop_last"] and settings["alg"] == "origin":
        raise ValueError("stop_last reorders commits by confidence; alg origin has none")
    if settings["stop_last"] and settings["dream_compat"]:
        raise ValueError("stop_last is unmask's own reordering, which Dream's sampler lacks: pass "
                         "dream_compat=False with it")


# Arguments of from_pretrained that say where and how to fetch a file; the generation config is read with them.
_HUB_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def read_generation_config(pretrained_model_name_or_path, from_pretrained_kwargs: dict) -> GenerationConfig | None:
    """The directory's generation_config.json (the sampler defaults unmask wrote), or None without one.

    transformers 4.x reads it while loading any model that generates, but 5.x only for subclasses of its own
    GenerationMixin (whose autoregressive ``generate`` this model must not inherit), so the model reads it
    itself.
    """
    hub = {name: from_pretrained_kwargs[name] for name in _HUB_ARGUMENTS if name in from_pretrained_kwargs}
    with quiet_generation_config_checks():
        try:
            return GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        except OSError:
            return None


@contextlib.contextmanager
def quiet_generation_config_checks():
    """Silence transformers' complaint that ``temperature`` is set without ``do_sample`` (a warning on 4.x, a
    log line on 5.x): do_sample is an autoregressive notion; here temperature 0 simply means argmax."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*do_sample.*", category=UserWarning)
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)


# ----------------------------------------------------------------------------------------------------------
# The method


class DiffusionGenerationMixin:
    """Adds ``diffusion_generate`` to the model. (The name ends in GenerationMixin so that transformers treats
    the model as one that generates and gives it a ``generation_config``, which 4.x fills from
    generation_config.json; ``DreamModel.from_pretrained`` does so on 5.x.)"""

    def _sampler_settings(self, generation_config, overrides: dict) -> dict:
        """unmask's defaults <- a diffusion generation config's values <- the call's arguments.

        A generation config counts only when it defines ``steps`` (one written by unmask, or Dream's): a
        plain one holds transformers' autoregressive defaults (top_k=50 on 4.x), not this sampler's.
        ``dream_compat``, unless set, is on — Dream's sampler for Dream's call — except with ``stop_last``.
        """
        settings = dict(SAMPLER_DEFAULTS)
        if generation_config is not None and getattr(generation_config, "steps", None) is not None:
            for name in SAMPLER_DEFAULTS:
                value = getattr(generation_config, name, None)
                if value is not None:
                    settings[name] = value
        settings.update(overrides)
        if settings["dream_compat"] is None:
            settings["dream_compat"] = not settings["stop_last"]
        return settings

    @torch.no_grad()
    def diffusion_generate(self, inputs: torch.LongTensor | None = None, generation_config=None, *,
                           input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                           max_length: int | None = None, output_history: bool = False,
                           return_dict_in_generate: bool = False, generator: torch.Generator | None = None,
                           generation_tokens_hook_func=None, generation_logits_hook_func=None, **kwargs):
        """Fill ``max_new_tokens`` masks after each (left-padded) prompt of ``inputs`` (B, P).

        Sampler arguments (keywords): max_new_tokens, steps, temperature, top_p, top_k, alg, alg_temp, eps,
        stop_last, dream_compat; those not passed come from ``generation_config`` (default: the model's, read
        from the directory's generation_config.json), then from unmask's defaults; ``dream_compat`` (Dream's own
        sampler, exactly) is on unless set or ``stop_last`` is on (module docstring). ``max_length`` (prompt + new) is
        used when ``max_new_tokens`` is not passed. ``attention_mask`` (B, P): 1 on real tokens, 0 on left
        padding. ``generator``: the source of all randomness (default: torch's global one).
        ``generation_logits_hook_func(step, x, logits)`` may return changed (aligned) logits and
        ``generation_tokens_hook_func(step, x, logits)`` a changed canvas (called with step None first).

        A block-diffusion model (``config.block_size``) is decoded block by block in unmask's arithmetic
        (module docstring): ``alg="origin"`` and ``dream_compat=True`` are errors there, ``eps`` is unused, and the
        hooks see the logits of the columns up to the end of the current block.

        Returns the ids (B, P + max_new_tokens), or with ``return_dict_in_generate`` a
        ``DiffusionGenerateOutput`` whose ``history`` holds the canvas after each step when ``output_history``.
        """
        unknown = sorted(set(kwargs) - set(SAMPLER_DEFAULTS))
        if unknown:
            raise TypeError(f"diffusion_generate got unknown argument(s) {', '.join(unknown)}; it takes "
                            f"{', '.join(SAMPLER_DEFAULTS)}, max_length, attention_mask, generator, "
                            "output_history, return_dict_in_generate and the two hook functions")
        prompt = inputs if inputs is not None else input_ids
        if prompt is None or prompt.dim() != 2:
            raise ValueError("pass the prompt ids as a (batch, length) tensor")
        if "max_new_tokens" not in kwargs and max_length is not None:
            kwargs["max_new_tokens"] = max_length - prompt.shape[1]
        if generation_config is None:
            generation_config = getattr(self, "generation_config", None)
        settings = self._sampler_settings(generation_config, kwargs)
        block_model = getattr(self.config, "block_size", None) is not None
        if block_model:
            settings = block_settings(settings, kwargs)
        check_settings(settings)
        mask_token_id = self.config.mask_token_id
        if mask_token_id is None:
            raise ValueError("config.json has no mask_token_id, so the model cannot be sampled by unmasking")
        # stop_last holds back eos and pad (the first eos where config.json lists several, as unmask reads it)
        ends = [i[0] if isinstance(i, (list, tuple)) and i else i
                for i in (self.config.eos_token_id, self.config.pad_token_id)]
        stop_ids = tuple(dict.fromkeys(int(i) for i in ends if isinstance(i, int)))

        device = self.get_input_embeddings().weight.device
        prompt = prompt.to(device, dtype=torch.long)
        batch = prompt.shape[0]
        masks = torch.full((batch, settings["max_new_tokens"]), mask_token_id, dtype=torch.long, device=device)
        x = torch.cat([prompt, masks], dim=1)  # (B, T) the canvas
        real = None
        if attention_mask is not None:
            real = attention_mask.to(device).bool()
            if tuple(real.shape) != tuple(prompt.shape):
                raise ValueError(f"attention_mask shape {tuple(real.shape)} does not match the ids "
                                 f"{tuple(prompt.shape)}")
            if bool((real[:, 1:].long() < real[:, :-1].long()).any()) or not bool(real.any(-1).all()):
                raise ValueError("prompts must be left-padded, each with at least one real token")
            real = None if bool(real.all()) else torch.cat([real, torch.ones_like(masks, dtype=torch.bool)], 1)

        hooks = (generation_tokens_hook_func, generation_logits_hook_func)
        history = [] if output_history else None
        if hooks[0] is not None:
            x = hooks[0](None, x, None)
        if block_model:
            x = self._block_decode(x, real, prompt.shape[1], settings, stop_ids, generator, hooks, history)
        else:
            x = self._full_decode(x, real, settings, stop_ids, generator, hooks, history)
        if return_dict_in_generate:
            return DiffusionGenerateOutput(sequences=x, history=tuple(history) if output_history else None)
        return x

    def _full_decode(self, x: torch.Tensor, real: torch.Tensor | None, settings: dict, stop_ids: tuple[int, ...],
                     generator: torch.Generator | None, hooks: tuple, history: list | None) -> torch.Tensor:
        """The full-attention sampler over the canvas ``x`` (B, T): ``steps`` forwards of the whole canvas.
        ``real`` (B, T) marks the real columns (None: all). Returns the canvas; appends it to ``history`` (when
        given) after each step."""
        tokens_hook, logits_hook = hooks
        mask_token_id = self.config.mask_token_id
        timesteps = torch.linspace(1, settings["eps"], settings["steps"] + 1, device=x.device)
        for step in range(settings["steps"]):
            masked = x == mask_token_id
            if real is not None:
                masked &= real  # a pad is never a position to fill
            raw = self(x, attention_mask=real).logits
            logits = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)  # aligned: position j's prediction at j
            if logits_hook is not None:
                logits = logits_hook(step, x, logits)
            commit_step(logits, x, masked, step, timesteps, settings, mask_token_id, stop_ids, generator)
            if tokens_hook is not None:
                x = tokens_hook(step, x, logits)
            if history is not None:
                history.append(x.clone())
        return x

    def _block_decode(self, x: torch.Tensor, real: torch.Tensor | None, prompt_length: int, settings: dict,
                      stop_ids: tuple[int, ...], generator: torch.Generator | None, hooks: tuple,
                      history: list | None) -> torch.Tensor:
        """A block-diffusion model's decode of the masks after column ``prompt_length`` of ``x`` (B, T), block by
        block (module docstring). Each step recomputes columns [0, b1) with no cache: finished blocks never
        change, so this is exact, just slower than unmask's cached decoder. The hooks see the aligned logits of
        those columns (B, b1, V). Returns the canvas; appends it to ``history`` (when given) after each step."""
        tokens_hook, logits_hook = hooks
        spans = block_spans(prompt_length, settings["max_new_tokens"], self.config.block_size)
        steps_per_block = max(1, settings["steps"] // len(spans))  # unmask shares the steps evenly
        step = 0
        for b0, b1 in spans:
            schedule = block_schedule(b1 - b0, steps_per_block)
            for inner, count in enumerate(schedule):
                raw = self(x[:, :b1], attention_mask=None if real is None else real[:, :b1],
                           block_origin=prompt_length).logits
                logits = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)  # aligned: position j's prediction at j
                if logits_hook is not None:
                    logits = logits_hook(step, x, logits)
                if inner == len(schedule) - 1:  # the block's last step fills it (what a hook left masked too)
                    count = b1 - b0
                block_commit_step(logits[:, b0:b1], x, b0, count, settings, self.config.mask_token_id, stop_ids,
                                  generator)
                if tokens_hook is not None:
                    x = tokens_hook(step, x, logits)
                if history is not None:
                    history.append(x.clone())
                step += 1
        return x
