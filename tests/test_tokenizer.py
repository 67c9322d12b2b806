"""Tokenizer: special ids from files, ChatML exactly as docs/model.md, cutting at eos/dlm_pad, both file layouts."""

from __future__ import annotations

import json

import pytest

from unmask.errors import TokenizerError
from unmask.tokenizer import DLM_PAD, ENDOFTEXT, IM_END, IM_START, MASK, load_tokenizer

CODE = "def add(a, b):\n    return a + b  # ünïcode ✓\n"


def test_round_trip_and_special_ids(tokenizer, tmp_path):
    assert tokenizer.decode(tokenizer.encode(CODE)) == CODE
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.special == tokenizer.special
    assert loaded.encode(CODE) == tokenizer.encode(CODE)
    added = json.loads((tmp_path / "added_tokens.json").read_text())
    assert added[MASK] == tokenizer.special.mask and added[DLM_PAD] == tokenizer.special.dlm_pad
    assert len(set(added.values())) == len(added) == 5


def test_ids_come_from_config_json_over_the_vocabulary(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    other = tokenizer.token_id(IM_END)
    loaded = load_tokenizer(tmp_path, {"mask_token_id": other, "eos_token_id": tokenizer.special.eos})
    assert loaded.special.mask == other


def test_decode_cuts_at_eos_and_dlm_pad(tokenizer):
    ids = tokenizer.encode("x = 1")
    for stop in (tokenizer.special.eos, tokenizer.special.dlm_pad):
        assert tokenizer.decode(ids + [stop] + tokenizer.encode("junk")) == "x = 1"
    assert "junk" in tokenizer.decode(ids + [tokenizer.special.eos] + tokenizer.encode("junk"), cut=False)


def test_chat_template_is_spec_chatml(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Write f."}],
                                         assistant_prefix="Here is the code to solve this problem:\n```python")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite f."
                    "<|im_end|>\n<|im_start|>assistant\nHere is the code to solve this problem:\n```python")
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.special.im_start and tokenizer.special.im_end in ids


def test_saved_jinja_template_renders_the_same_text(tokenizer, tmp_path):
    jinja2 = pytest.importorskip("jinja2")
    tokenizer.save(tmp_path)
    template = json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "more"}]
    rendered = jinja2.Template(template).render(messages=messages, add_generation_prompt=True)
    assert rendered == tokenizer.apply_chat_template(messages)


def test_vocab_and_merges_layout_encodes_like_tokenizer_json(tokenizer, tmp_path):
    tokenizer.backend.model.save(str(tmp_path))  # writes vocab.json + merges.txt (Qwen2's layout)
    tokenizer.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(CODE) == tokenizer.encode(CODE)
    assert loaded.special.mask == tokenizer.special.mask
    assert loaded.token_id(IM_START) == tokenizer.token_id(IM_START)


def test_missing_files_and_missing_mask_token(tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    from tokenizers import Tokenizer, models

    plain = Tokenizer(models.BPE())
    plain.add_special_tokens([ENDOFTEXT])
    plain.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="no mask token"):
        load_tokenizer(tmp_path)
