"""ServeConfig: the server's address and every limit it enforces on client input (frozen, validated)."""

from __future__ import annotations

from dataclasses import dataclass, field

from unmask.config import Settings, check_ints, doc
from unmask.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig(Settings):
    """Limits of ``unmask serve``; a request beyond any of them is answered 400/413/429, never 500."""

    host: str = field(default="127.0.0.1", metadata=doc("address to bind (loopback by default)"))
    port: int = field(default=8000, metadata=doc("TCP port (0 = any free port)"))
    model_name: str = field(default="", metadata=doc("model id reported by /v1/models (default: directory name)"))
    max_body_bytes: int = field(default=1_000_000, metadata=doc("largest request body accepted (413 above)"))
    max_tokens: int = field(default=1024, metadata=doc("largest max_tokens a request may ask for"))
    max_steps: int = field(default=4096, metadata=doc("largest number of denoising steps a request may ask for"))
    max_n: int = field(default=4, metadata=doc("largest n (choices per prompt)"))
    max_prompts: int = field(default=8, metadata=doc("most prompts in one /v1/completions request (a batch)"))
    max_stop: int = field(default=4, metadata=doc("most stop sequences per request"))
    max_stop_chars: int = field(default=64, metadata=doc("longest stop sequence, in characters"))
    max_masks: int = field(default=1024, metadata=doc("most <|mask|> placeholders (counting N) per prompt"))
    max_concurrency: int = field(default=16, metadata=doc("requests running or queued at once (429 above)"))
    max_batch: int = field(default=8, metadata=doc("rows the scheduler puts into one forward pass"))
    batch_wait_ms: float = field(default=5.0, metadata=doc("how long the scheduler waits to fill a batch"))

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port!r}")
        check_ints(self, ("max_body_bytes", "max_tokens", "max_steps", "max_n", "max_prompts", "max_stop",
                          "max_stop_chars", "max_masks", "max_concurrency", "max_batch"))
        if not (isinstance(self.batch_wait_ms, (int, float)) and 0 <= self.batch_wait_ms <= 1000):
            raise ConfigError(f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms!r}")
