"""Early EOS (SPEC §3.2): when is a row finished, what is left to pad, and how many tokens were useful.

Pure tensor functions over the generated region (B, L) of a canvas. A row is *finished* once it holds a
committed stop token (eos/pad) and every position before the first such token is committed: committed
tokens never change, so from then on the row's text (everything before that stop token) is final whatever
the decoder does next. Stopping there therefore never cuts a row before an EOS the full decode would keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
