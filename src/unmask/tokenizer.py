"""A thin tokenizer over the `tokenizers` library, with Dream's special tokens and the ChatML template.

Loads ``tokenizer.json`` (or Qwen2's ``vocab.json`` + ``merges.txt``) from a checkpoint directory. Special
token ids are always looked up from the files (``added_tokens.json``, ``tokenizer_config.json``, the
tokenizer's own added tokens and ``config.json``), never hard-coded: Dream/DiffuCoder use ``<|mask|>``
151666 and ``<|endoftext|>`` 151643, but the project's own small tokenizers number them differently.

``train_bpe`` builds a byte-level BPE with the Dream-style special tokens for the project's small models.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from unmask.errors import TokenizerError
from unmask.fileio import atomic_write_text

MASK, ENDOFTEXT, IM_START, IM_END, DLM_PAD = "<|mask|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|dlm_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, MASK, DLM_PAD)
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2's pre-tokenisation split (digits one by one, letters runs, punctuation runs, newlines).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# ChatML, as a Jinja template for tokenizer_config.json so HF's apply_chat_template produces the same text
# as Tokenizer.apply_chat_template below.
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens a dLLM needs; ``None`` where the vocabulary lacks one."""

    mask: int
    pad: int
    eos: int
    bos: int | None = None
    im_start: int | None = None
    im_end: int | None = None
    dlm_pad: int | None = None

    def stop_ids(self) -> tuple[int, ...]:
        """Generation ends at the first of these (eos; Instruct models also ``<|dlm_pad|>`` and ``<|im_end|>``)."""
        ids = [self.eos, self.pad, self.dlm_pad, self.im_end]
        return tuple(dict.fromkeys(i for i in ids if i is not None))


class Tokenizer:
    def __init__(self, backend: HFTokenizer, special: SpecialIds, chat_template: str | None = None) -> None:
        self.backend = backend
        self.special = special
        self.chat_template = chat_template

    # -- basic ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, cut: bool = True, skip_special: bool = True) -> str:
        """Text of ``ids``; with ``cut``, stop at the first eos/pad/``<|dlm_pad|>``/``<|im_end|>``."""
        ids = [int(i) for i in ids]
        if cut:
            stops = set(self.special.stop_ids())
            for n, i in enumerate(ids):
                if i in stops:
                    ids = ids[:n]
                    break
        return self.backend.decode(ids, skip_special_tokens=skip_special)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """One display string per id (for live canvases): each token decoded on its own."""
        return [self.backend.decode([int(i)], skip_special_tokens=False) for i in ids]

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """The raw bytes of each token: a byte-level token may hold part of a UTF-8 character, which its decoded
        text would show as U+FFFD. Tokens outside the byte-level alphabet (added tokens) give their text's bytes."""
        table = _byte_values() if isinstance(self.backend.decoder, decoders.ByteLevel) else {}
        out = []
        for i in ids:
            piece = self.backend.id_to_token(int(i)) or ""
            if table and piece and all(c in table for c in piece):
                out.append(bytes(table[c] for c in piece))
            else:
                out.append(self.backend.decode([int(i)], skip_special_tokens=False).encode())
        return out

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # -- chat -------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                            assistant_prefix: str = "") -> str:
        """ChatML text (docs/model.md, chat format); a default system turn is added when the first message is not one.

        ``assistant_prefix`` pre-fills the assistant turn, e.g. "Here is the code to solve this
        problem:\\n```python" as DiffuCoder's evaluation does.
        """
        if self.special.im_start is None or self.special.im_end is None:
            raise TokenizerError("this tokenizer has no <|im_start|>/<|im_end|> tokens, so it cannot format chats")
        parts = []
        if not messages or messages[0].get("role") != "system":
            parts.append(f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n")
        for message in messages:
            role, content = message.get("role"), message.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise TokenizerError(f"a chat message needs role system/user/assistant and string content: {message!r}")
            parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n{assistant_prefix}")
        return "".join(parts)

    # -- files ------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json and added_tokens.json (HF layout)."""
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        added = {tok.content: idx for idx, tok in self.backend.get_added_tokens_decoder().items()}
        names = {v: k for k, v in added.items()}
        config = {
            "tokenizer_class": "Qwen2Tokenizer",
            "model_max_length": 131072,
            "clean_up_tokenization_spaces": False,
            "bos_token": names.get(self.special.bos) if self.special.bos is not None else None,
            "eos_token": names.get(self.special.eos),
            "pad_token": names.get(self.special.pad),
            "mask_token": names.get(self.special.mask),
            "added_tokens_decoder": {str(idx): {"content": tok.content, "special": tok.special,
                                                "lstrip": False, "rstrip": False, "normalized": False,
                                                "single_word": False}
                                     for idx, tok in sorted(self.backend.get_added_tokens_decoder().items())},
            "chat_template": self.chat_template or CHATML_TEMPLATE,
        }
        _write_json(directory / "tokenizer_config.json", config)
        _write_json(directory / "added_tokens.json", dict(sorted(added.items(), key=lambda kv: kv[1])))


def _write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path}: invalid JSON ({err})") from None


def load_tokenizer(directory: str | os.PathLike, model_config: dict | None = None) -> Tokenizer:
    """Load the tokenizer of a checkpoint directory; ``model_config`` is its parsed config.json, if any."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        try:
            backend = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as err:  # the Rust error text names the problem; keep it, add the file
            raise TokenizerError(f"{directory / 'tokenizer.json'}: cannot be read ({err})") from None
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        backend = _qwen2_from_vocab_merges(directory)
    else:
        raise TokenizerError(f"{directory}: no tokenizer.json (or vocab.json + merges.txt) found")

    def optional_json(name: str) -> dict:
        return _read_json(directory / name) if (directory / name).is_file() else {}

    tok_config = optional_json("tokenizer_config.json")
    added = optional_json("added_tokens.json")
    # Make sure tokens listed only in the side files are known to the backend as specials.
    extra = {int(i): v["content"] for i, v in tok_config.get("added_tokens_decoder", {}).items()}
    extra.update({int(i): t for t, i in added.items()})
    missing = [t for i, t in sorted(extra.items()) if backend.token_to_id(t) is None]
    if missing:
        backend.add_special_tokens(missing)

    model_config = model_config or {}

    def lookup(token: str, config_key: str | None = None) -> int | None:
        if config_key and model_config.get(config_key) is not None:
            return int(model_config[config_key])
        return backend.token_to_id(token)

    def named(key: str) -> str | None:
        value = tok_config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    mask = lookup(named("mask_token") or MASK, "mask_token_id")
    eos = lookup(named("eos_token") or ENDOFTEXT, "eos_token_id")
    pad = lookup(named("pad_token") or ENDOFTEXT, "pad_token_id")
    if mask is None:
        raise TokenizerError(f"{directory}: the vocabulary has no mask token ({MASK}) and config.json has no "
                             "mask_token_id; a diffusion model needs one")
    if eos is None:
        raise TokenizerError(f"{directory}: no eos token ({ENDOFTEXT}) in the vocabulary or config.json")
    bos_name = named("bos_token")
    has_bos = bos_name is not None or model_config.get("bos_token_id") is not None
    special = SpecialIds(
        mask=mask, eos=eos, pad=pad if pad is not None else eos,
        bos=lookup(bos_name or ENDOFTEXT, "bos_token_id") if has_bos else None,
        im_start=backend.token_to_id(IM_START), im_end=backend.token_to_id(IM_END),
        dlm_pad=backend.token_to_id(DLM_PAD))
    return Tokenizer(backend, special, tok_config.get("chat_template"))


@functools.cache
def _byte_values() -> dict[str, int]:
    """Character → byte of a byte-level BPE vocabulary. The alphabet spells each byte with one printable
    character: bytes 33–126, 161–172 and 174–255 are their own code point; the other 68 (controls, space, 127,
    128–160, 173) take the code points 256, 257, … in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in set(printable)]
    table.update({chr(256 + k): b for k, b in enumerate(others)})
    return table


def _byte_level_pipeline(backend: HFTokenizer) -> HFTokenizer:
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _qwen2_from_vocab_merges(directory: Path) -> HFTokenizer:
    try:
        bpe = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as err:
        raise TokenizerError(f"{directory}: vocab.json/merges.txt cannot be read ({err})") from None
    return _byte_level_pipeline(HFTokenizer(bpe))


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE (Qwen2 pre-tokenisation) with the Dream-style special tokens.

    The specials take the first ids (0.. in ``SPECIAL_TOKENS`` order); ``<|endoftext|>`` serves as eos and
    bos, as in Qwen2.5/Dream, and ``<|dlm_pad|>`` pads (as DiffuCoder-Instruct: a pad distinct from the end
    token keeps the long pad run of SFT rows from teaching the model to commit the end first).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise TokenizerError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} for a byte-level BPE")
    backend = _byte_level_pipeline(HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS}
    special = SpecialIds(mask=ids[MASK], pad=ids[DLM_PAD], eos=ids[ENDOFTEXT], bos=ids[ENDOFTEXT],
                         im_start=ids[IM_START], im_end=ids[IM_END], dlm_pad=ids[DLM_PAD])
    return Tokenizer(backend, special, CHATML_TEMPLATE)
