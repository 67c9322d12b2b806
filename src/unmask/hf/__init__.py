"""Remote code for ``transformers``, shipped beside the weights of every Dream directory unmask saves.

``configuration_dream.py`` (``DreamConfig``), ``modeling_dream.py`` (``DreamModel``, unmask's network as a
``PreTrainedModel``) and ``generation_dream.py`` (``diffusion_generate``, unmask's reference sampler) are
package data: self-contained files that import torch and transformers only — a Hub user has no unmask — and
that unmask never imports itself. ``checkpoint.save_model`` copies them next to ``config.json``, whose
``auto_map`` names them, so ``AutoModel.from_pretrained(directory, trust_remote_code=True)`` loads what
unmask saved (docs/remote_code.md). A directory that ships code of its own — a Dream or DiffuCoder checkpoint
being converted — keeps it (``own_code``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

REMOTE_CODE_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_dream.py")


def write_remote_code(directory: str | Path) -> None:
    """Copy the remote-code files into ``directory`` (read through importlib.resources: works from a wheel)."""
    source = resources.files(__name__)
    for name in REMOTE_CODE_FILES:
        (Path(directory) / name).write_bytes((source / name).read_bytes())


def own_code(directory: str | Path) -> list[Path]:
    """The Python files ``directory`` ships as remote code of its own: its top-level ``*.py``, unless they are
    exactly the files unmask writes (then they are unmask's, perhaps from an older version, and a re-save
    writes the current ones). A Dream or DiffuCoder checkpoint has its own (``generation_utils.py``, …)."""
    files = sorted(Path(directory).glob("*.py"))
    return [] if {f.name for f in files} == set(REMOTE_CODE_FILES) else files
