"""``model.diffusion_generate``: Dream-style masked-diffusion sampling for the remote-code ``DreamModel``.

Remote code written for unmask (imports torch and transformers only). It is unmask's reference sampler
(unmask docs/sampler.md, ``unmask.decoding.reference``) behind the call of Dream's ``diffusion_generate``:
the same arguments, the same arithmetic, and — given the same ``torch.Generator`` — the same random draws in
the same order, so its output ids equal ``unmask.decoding.reference.generate``'s.

The canvas is the prompt followed by ``max_new_tokens`` mask tokens; each of ``steps`` steps is one forward
over the whole canvas (no cache). With timesteps ``linspace(1, eps, steps + 1)`` (float32) and t, s the
current and next one:
- ``alg="origin"``: each masked position is committed with probability 1 - s/t (all at the last step), its
  token drawn from the filtered distribution;
- otherwise every masked position gets a candidate token and a confidence (``maskgit_plus`` p(x0),
  ``topk_margin`` p1 - p2, ``entropy`` sum p log p) and ``int(m * (1 - s/t))`` of a row's ``m`` masked
  positions are committed (all at the last step): the most confident, or with ``alg_temp`` > 0 a draw
  without replacement from softmax(confidence / alg_temp) (as Gumbel-top-k).
Token distribution: float32 logits of the masked positions, the mask token removed, / temperature (when
> 0), top-p, top-k, softmax; then a draw (temperature > 0) or the argmax.

Where this differs from Dream's own code (as unmask does, docs/sampler.md): the mask token is never sampled;
``m`` is each row's own masked count; probabilities are float32 for bf16 models; ``alg_temp`` uses
Gumbel-top-k; ``stop_last`` is available. And the defaults are unmask's (no top-k, no top-p, temperature 0),
read from the directory's generation_config.json: Dream's call on transformers 4.46 fills in ``top_k=50``,
``top_p=1.0`` when the caller omits them, so the two give different tokens unless both are passed.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import transformers
from transformers import GenerationConfig
from transformers.utils import ModelOutput

# unmask's DecodeConfig defaults: what a call gets when neither it nor the generation config says otherwise.
SAMPLER_DEFAULTS = {"max_new_tokens": 256, "steps": 256, "temperature": 0.0, "top_p": None, "top_k": None,
                    "alg": "entropy", "alg_temp": 0.0, "eps": 1e-3, "stop_last": False}
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


def filtered_probs(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None
                   ) -> torch.Tensor:
    """(N, V) logits -> float32 probabilities after temperature, top-p (nucleus) and top-k, in that order."""
    logits = logits.float()
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


def sample_with_confidence(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None,
                           alg: str, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` (N, V) and its confidence -> (x0 (N,) long, confidence (N,) float32)."""
    probs = filtered_probs(logits, temperature, top_p, top_k)
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device), torch.zeros(0, device=logits.device)
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
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


def commit_step(logits: torch.Tensor, canvas: torch.Tensor, masked: torch.Tensor, step: int,
                timesteps: torch.Tensor, settings: dict, mask_token_id: int, stop_ids: tuple[int, ...],
                generator: torch.Generator | None) -> None:
    """Commit this step's tokens into ``canvas`` (B, T) in place. logits (B, T, V) are aligned (position j's
    prediction at j); masked (B, T) bool marks the positions still to fill."""
    t, s = timesteps[step], timesteps[step + 1]
    last = step == settings["steps"] - 1
    scores_logits = logits[masked].float()  # (N, V), masked positions in row-major order
    # Committing the mask token would leave the position masked: it is never a candidate.
    scores_logits[:, mask_token_id] = torch.finfo(scores_logits.dtype).min
    draw = (settings["temperature"], settings["top_p"], settings["top_k"])

    if settings["alg"] == "origin":
        chance = 1.0 if last else float(1 - s / t)
        chosen = torch.rand(scores_logits.shape[0], generator=generator, device=canvas.device) < chance
        x0, _ = sample_with_confidence(scores_logits[chosen], *draw, "maskgit_plus", generator)
        rows, cols = (index[chosen] for index in masked.nonzero(as_tuple=True))
        canvas[rows, cols] = x0
        return

    x0, confidence = sample_with_confidence(scores_logits, *draw, settings["alg"], generator)
    scores = torch.full(canvas.shape, float("-inf"), device=canvas.device)
    scores[masked] = confidence
    candidates = torch.zeros_like(canvas)
    candidates[masked] = x0
    if settings["stop_last"] and stop_ids:
        scores = hold_back_stops(scores, candidates, masked, stop_ids)
    counts = masked.sum(-1)  # (B,)
    counts = (counts if last else (counts.float() * (1 - s / t)).long()).tolist()
    # Rows that commit the same number of tokens are picked in one call (all rows, for a plain prompt batch).
    groups: dict[int, list[int]] = {}
    for row, k in enumerate(counts):
        groups.setdefault(k, []).append(row)
    for k, members in groups.items():
        if k == 0:
            continue
        rows = torch.tensor(members, device=canvas.device)
        row_scores = scores[rows]  # (b, T)
        if settings["alg_temp"] > 0:
            # k draws without replacement from softmax(scores / alg_temp), as the top k of scores / alg_temp
            # plus Gumbel noise (-log of an Exp(1) draw): it cannot fail where softmax underflows to zero.
            noise = -torch.log(torch.empty(row_scores.shape, device=canvas.device).exponential_(generator=generator))
            picks = torch.topk(row_scores / settings["alg_temp"] + noise, k, dim=-1).indices
        else:
            picks = torch.topk(row_scores, k, dim=-1).indices  # (b, k)
        row_index = rows[:, None].expand_as(picks)
        canvas[row_index, picks] = candidates[row_index, picks]


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
    if settings["stop_last"] and settings["alg"] == "origin":
        raise ValueError("stop_last reorders commits by confidence; alg origin has none")


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
        """
        settings = dict(SAMPLER_DEFAULTS)
        if generation_config is not None and getattr(generation_config, "steps", None) is not None:
            for name in SAMPLER_DEFAULTS:
                value = getattr(generation_config, name, None)
                if value is not None:
                    settings[name] = value
        settings.update(overrides)
        return settings

    @torch.no_grad()
    def diffusion_generate(self, inputs: torch.LongTensor | None = None, generation_config=None, *,
                           input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                           max_length: int | None = None, output_history: bool = False,
                           return_dict_in_generate: bool = False, generator: torch.Generator | None = None,
                           generation_tokens_hook_func=None, generation_logits_hook_func=None, **kwargs):
        """Fill ``max_new_tokens`` masks after each (left-padded) prompt of ``inputs`` (B, P).

        Sampler arguments (keywords): max_new_tokens, steps, temperature, top_p, top_k, alg, alg_temp, eps,
        stop_last; those not passed come from ``generation_config`` (default: the model's, read from the
        directory's generation_config.json), then from unmask's defaults. ``max_length`` (prompt + new) is
        used when ``max_new_tokens`` is not passed. ``attention_mask`` (B, P): 1 on real tokens, 0 on left
        padding. ``generator``: the source of all randomness (default: torch's global one).
        ``generation_logits_hook_func(step, x, logits)`` may return changed (aligned) logits and
        ``generation_tokens_hook_func(step, x, logits)`` a changed canvas (called with step None first).

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

        timesteps = torch.linspace(1, settings["eps"], settings["steps"] + 1, device=device)
        history = []
        if generation_tokens_hook_func is not None:
            x = generation_tokens_hook_func(None, x, None)
        for step in range(settings["steps"]):
            masked = x == mask_token_id
            if real is not None:
                masked &= real  # a pad is never a position to fill
            raw = self(x, attention_mask=real).logits
            logits = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)  # aligned: position j's prediction at j
            if generation_logits_hook_func is not None:
                logits = generation_logits_hook_func(step, x, logits)
            commit_step(logits, x, masked, step, timesteps, settings, mask_token_id, stop_ids, generator)
            if generation_tokens_hook_func is not None:
                x = generation_tokens_hook_func(step, x, logits)
            if output_history:
                history.append(x.clone())
        if return_dict_in_generate:
            return DiffusionGenerateOutput(sequences=x, history=tuple(history) if output_history else None)
        return x
