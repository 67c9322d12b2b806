"""Pure tensor math of masked diffusion: the shift convention, masking, schedules, losses.

Everything here is a function of tensors (and an explicit ``torch.Generator`` where randomness is
involved), so it can be tested alone and shared by training, sampling and RL.
"""

from __future__ import annotations

import torch


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Re-align raw model outputs so that ``result[:, j]`` is the prediction for position ``j``.

    Dream-family models are adapted from autoregressive ones and keep their *shift*: the output at
    position ``i`` predicts the token at ``i + 1``. Every consumer (losses, samplers, RL log-probs)
    calls this one function, so the convention lives in exactly one place. Position 0 has no
    predecessor; it reuses the output at 0, which is harmless because position 0 is always a real
    (never masked) token.

    logits: (B, T, V) raw outputs -> (B, T, V) aligned predictions.
    """
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
