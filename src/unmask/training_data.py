"""Training data for the masked-diffusion loop: corpora in, fixed-length token rows out.

Two stages share one layout, ``TokenRows(ids (N, T), prompt_lengths (N,))``: positions before a row's
prompt length are never masked. Pretraining rows are packed from a stream of documents and get prompt
length 1 (position 0 has no predecessor under the shift convention, docs/model.md, so it stays clean); SFT rows
are ``[prompt][response][pad ...]`` (``diffusion.sft_collate``) with the prompt kept clean.

Sources (``read_texts``): a directory of ``.py`` files, a ``.jsonl`` with a ``text`` field, or ``stdlib``
(the interpreter's own sources). Documents are deduplicated by content hash and split into train/val by
hash, so the split of a document does not depend on what else is in the corpus. ``EpochSampler`` hands
out row indices epoch by epoch from an explicit generator whose state is checkpointed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.errors import ConfigError
from unmask.fileio import parse_jsonl

__all__ = [
    "EpochSampler",
    "TokenRows",
    "dedup_texts",
    "pack_rows",
    "read_sft_pairs",
    "read_texts",
    "sft_rows",
    "split_by_hash",
    "split_sft_pairs",
]


@dataclass(frozen=True)
class TokenRows:
    """Fixed-length training rows: ``ids`` (N, T) long and ``prompt_lengths`` (N,) long (>= 1)."""

    ids: torch.Tensor
    prompt_lengths: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.dim() != 2 or self.ids.dtype != torch.long:
            raise ValueError(
                f"ids must be a (N, T) long tensor, got {tuple(self.ids.shape)} {self.ids.dtype}"
            )
        if self.prompt_lengths.shape != (self.ids.shape[0],):
            raise ValueError(f"prompt_lengths must have shape ({self.ids.shape[0]},)")
        if len(self) and bool(((self.prompt_lengths < 1) | (self.prompt_lengths >= self.ids.shape[1])).any()):
            raise ValueError("every prompt length must be in [1, T - 1]")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])


# ----------------------------------------------------------------------------------------------------------
# Reading corpora


def _content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_jsonl(path: Path, fields: Sequence[str]) -> list[dict[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    rows = []
    for number, row in parse_jsonl(lines, path, error=ConfigError):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{number}: each line must be a JSON object")
        for name in fields:
            if not isinstance(row.get(name), str):
                raise ConfigError(f"{path}:{number}: missing string field {name!r}")
        rows.append({name: row[name] for name in fields})
    return rows


def read_texts(source: str | Path, *, max_bytes: int | None = None) -> list[str]:
    """Documents of a corpus: ``stdlib``, a directory (its ``.py`` files, recursively, sorted), or a
    ``.jsonl`` file with a ``text`` field per line. Empty documents are dropped; an empty corpus, a
    missing path or an unreadable file raises ``ConfigError`` naming it."""
    if str(source) == "stdlib":
        from unmask.corpus import stdlib_texts

        texts = list(stdlib_texts(max_bytes=max_bytes))
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(
                f"data path {path} does not exist (use a directory of .py files, a .jsonl, or 'stdlib')"
            )
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.py") if p.is_file())
            texts = []
            for file in files:
                try:
                    texts.append(file.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError) as err:
                    raise ConfigError(f"cannot read {file}: {err}") from None
        elif path.suffix == ".jsonl":
            texts = [row["text"] for row in _read_jsonl(path, ("text",))]
        else:
            raise ConfigError(f"data file {path} must be a .jsonl (or pass a directory of .py files)")
        if max_bytes is not None:
            kept, total = [], 0
            for text in texts:
                if total >= max_bytes:
                    break
                kept.append(text)
                total += len(text.encode("utf-8"))
            texts = kept
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ConfigError(f"the corpus {source} is empty (no non-blank documents)")
    return texts


def read_sft_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a JSONL file with ``prompt`` and ``response`` string fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"SFT data {path} is not a file (expected a .jsonl with prompt/response fields)")
    pairs = [(row["prompt"], row["response"]) for row in _read_jsonl(path, ("prompt", "response"))]
    if not pairs:
        raise ConfigError(f"the SFT file {path} has no examples")
    return pairs


def dedup_texts(texts: Iterable[str]) -> list[str]:
    """Drop exact duplicates (same sha256 of the UTF-8 bytes), keeping first occurrences in order."""
    seen: set[str] = set()
    out = []
    for text in texts:
        key = _content_hash(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def split_by_hash(
    items: Sequence, val_fraction: float, key: Callable[[object], str] = str
) -> tuple[list, list]:
    """Split into (train, val) by ranking items on their content hash: the ``round(n * val_fraction)``
    smallest hashes (at least one when ``val_fraction > 0`` and ``n >= 2``) go to val. Deterministic and
    independent of input order; each part keeps the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(items)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    hashes = [_content_hash(key(item)) for item in items]
    val_idx = set(sorted(range(n), key=lambda i: (hashes[i], i))[:n_val])
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val


def split_sft_pairs(pairs: Sequence[tuple[str, str]], val_fraction: float) -> tuple[list, list]:
    """(train, val) of (prompt, response) pairs, exact duplicates dropped (first kept), split by the hash of
    the whole pair: the split every SFT run (and every tool that needs its held-out pairs) sees."""
    unique = list(dict.fromkeys((p, r) for p, r in pairs))
    return split_by_hash(unique, val_fraction, key=lambda pr: pr[0] + "\x00" + pr[1])


# ----------------------------------------------------------------------------------------------------------
# Rows


def pack_rows(docs: Iterable[Sequence[int]], seq_len: int, *, eos_id: int) -> TokenRows:
    """Concatenate documents (each followed by ``eos_id``) into one stream and cut it into rows of
    ``seq_len`` tokens; the incomplete tail is dropped. Every row gets prompt length 1."""
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2, got {seq_len}")
    stream: list[int] = []
    for doc in docs:
        stream.extend(int(i) for i in doc)
        stream.append(eos_id)
    n = len(stream) // seq_len
    ids = torch.tensor(stream[: n * seq_len], dtype=torch.long).reshape(n, seq_len)  # (N, T)
    return TokenRows(ids, torch.ones(n, dtype=torch.long))


def sft_rows(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, *, pad_id: int) -> TokenRows:
    """``[prompt][response][pad ...]`` rows of ``seq_len``; examples whose prompt leaves no response room
    are skipped, over-long responses are cut (``sft_collate(truncate=True)``)."""
    from unmask.diffusion import sft_collate

    kept = [(list(p), list(r)) for p, r in pairs if 1 <= len(p) < seq_len]
    if not kept:
        return TokenRows(torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    ids, _, prompt_lengths = sft_collate(
        [p for p, _ in kept], [r for _, r in kept], total_length=seq_len, pad_id=pad_id, truncate=True
    )
    return TokenRows(ids, prompt_lengths)


# ----------------------------------------------------------------------------------------------------------
# Sampling


class EpochSampler:
    """Row indices in a fresh random order each epoch, from an explicit generator.

    ``next(k)`` returns the next ``k`` indices, running across epoch boundaries. The whole position
    (generator state, epoch, cursor, current order) is in ``state_dict`` so a resumed run continues with
    exactly the indices the uninterrupted run would have drawn.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ConfigError("the training set has no rows (corpus too small for seq_len?)")
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.cursor = 0
        self.order = torch.randperm(n, generator=self.generator)

    def next(self, k: int) -> torch.Tensor:
        out = []
        for _ in range(k):
            if self.cursor == self.n:
                self.epoch += 1
                self.cursor = 0
                self.order = torch.randperm(self.n, generator=self.generator)
            out.append(int(self.order[self.cursor]))
            self.cursor += 1
        return torch.tensor(out, dtype=torch.long)

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.cursor / self.n

    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "order": self.order.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ConfigError(
                f"the checkpoint's sampler covered {state['n']} rows but the data now has {self.n};"
                " resume with the same data and seq_len"
            )
        self.generator.set_state(state["generator"])
        self.epoch, self.cursor, self.order = state["epoch"], state["cursor"], state["order"].clone()


def val_batches(n: int, batch: int, max_batches: int) -> list[range]:
    """Consecutive index ranges covering the first ``min(n, batch * max_batches)`` validation rows."""
    total = min(n, batch * max_batches)
    return [range(s, min(s + batch, total)) for s in range(0, total, batch)][
        : max(0, math.ceil(total / batch))
    ]
