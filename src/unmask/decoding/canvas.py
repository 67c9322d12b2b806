"""The layout of a batch of canvases: rows of different lengths are left-padded (``left_pad``), and every
decoder checks what it is given the same way (``check_canvas``): (B, T) integer ids, an attention mask of the
same shape that is 0…0 1…1 in every row, with at least one real token."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(B, W) ids and (B, W) attention mask (1 = real token), left-padded to the longest row; and each row's
    offset (its padding)."""
    width = max(len(r) for r in rows)
    offsets = [width - len(r) for r in rows]
    ids = torch.tensor([[pad_id] * o + list(r) for o, r in zip(offsets, rows)], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * o + [1] * len(r) for o, r in zip(offsets, rows)], dtype=torch.long, device=device)
    return ids, mask, offsets


def check_canvas(canvas: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if canvas.dim() != 2 or canvas.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"input ids must be a (batch, length) integer tensor, got {tuple(canvas.shape)} "
                         f"{canvas.dtype}")
    if attention_mask is None:
        return
    if attention_mask.shape != canvas.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match the ids "
                         f"{tuple(canvas.shape)}")
    am = attention_mask.long()
    if bool((am[:, 1:] < am[:, :-1]).any()):
        raise ValueError("prompts must be left-padded: attention_mask must be 0…0 1…1 in every row")
    if bool((am.sum(-1) == 0).any()):
        raise ValueError("every row needs at least one real token (attention_mask is all zero in a row)")
