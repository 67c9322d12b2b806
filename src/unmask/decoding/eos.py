"""Early EOS (docs/sampler.md): when is a row finished, what is left to pad, and how many tokens were useful.

Pure tensor functions over the generated region (B, L) of a canvas. A row is *finished* once it holds a
committed stop token (eos/pad) and every position before the first such token is committed: committed
tokens never change, so from then on the row's text (everything before that stop token) is final whatever
the decoder does next. Stopping there therefore never cuts a row before an EOS the full decode would keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def default_stop_ids(model_config) -> tuple[int, ...]:
    """eos and pad of the model config (the ids the checkpoint declares), without duplicates."""
    ids = (model_config.eos_token_id, model_config.pad_token_id)
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


# Far below any confidence (entropy >= -log V, probabilities and margins >= 0) yet finite, so a demoted masked
# position still ranks above the -inf of committed positions.
_DEMOTION = 1e4


def demote_early_stops(confidence: torch.Tensor, candidates: torch.Tensor, masked: torch.Tensor,
                       stop_ids: Sequence[int]) -> torch.Tensor:
    """``confidence`` (B, T) with every masked position whose candidate is a stop token *and* that has a
    masked position to its left ranked below all other masked positions, leftmost first.

    With pad = eos and confidence ordering, the trailing end run is the most confident part of a canvas, so
    the reference sampler commits it first, from the right, and the code is written last into whatever room
    is left (stages go missing, lines repeat). Demoting those positions writes the text first and ends it
    after. The leftmost masked position is never demoted, so a step always has a candidate; when a step must
    commit more positions than are undemoted (the last step commits all), demoted ones follow left to right
    (scores 1e4 apart, far beyond the Gumbel noise of ``alg_temp``), so after every step no committed stop
    token has a mask to its left.
    """
    is_stop = torch.isin(candidates, torch.tensor(list(stop_ids), dtype=candidates.dtype, device=candidates.device))
    masks = masked.long()
    mask_to_left = (torch.cumsum(masks, dim=-1) - masks) > 0  # (B, T)
    column = torch.arange(confidence.shape[-1], device=confidence.device, dtype=confidence.dtype)
    demoted = -_DEMOTION * (1.0 + column)  # (T,) left of right
    return torch.where(is_stop & masked & mask_to_left, demoted.expand_as(confidence), confidence)


def first_stop(region: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """(B,) index of the first stop token in each row of ``region`` (B, L); L where there is none."""
    is_stop = torch.isin(region, torch.tensor(list(stop_ids), dtype=region.dtype, device=region.device))
    length = region.shape[1]
    index = torch.arange(length, device=region.device).expand_as(region)
    return torch.where(is_stop, index, torch.full_like(index, length)).min(dim=1).values


def rows_finished(region: torch.Tensor, stop_ids: Sequence[int], mask_token_id: int) -> torch.Tensor:
    """(B,) bool: the row has a committed stop token and no mask before the first one."""
    stops = first_stop(region, stop_ids)  # (B,)
    masked = region == mask_token_id  # (B, L)
    index = torch.arange(region.shape[1], device=region.device)[None, :]
    masked_before = (masked & (index < stops[:, None])).any(dim=1)
    return (stops < region.shape[1]) & ~masked_before


def pad_after_stop(region: torch.Tensor, stop_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """A copy of ``region`` (B, L) with every position after each row's first stop token set to ``pad_id``."""
    stops = first_stop(region, stop_ids)
    index = torch.arange(region.shape[1], device=region.device)[None, :]
    return torch.where(index > stops[:, None], torch.full_like(region, pad_id), region)


def useful_lengths(region: torch.Tensor, stop_ids: Sequence[int]) -> list[int]:
    """Tokens before the first stop token, per row: what a user actually gets."""
    return first_stop(region, stop_ids).tolist()
