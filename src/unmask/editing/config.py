"""``EditConfig``: the editing settings of ``unmask eval`` (how infilling benchmarks pick the middle length,
how many repair rounds follow generation). Recorded in ``eval_config.json`` only when not the default, so
run directories made before these settings existed still resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from unmask.errors import ConfigError


@dataclass(frozen=True)
class EditConfig:
    """Infilling length rule and test-guided repair for ``unmask eval``."""

    infill_length: str = field(default="auto", metadata={"doc": (
        "infilling benchmarks: middle length rule: auto (search scored by the model) | oracle (the canonical "
        "middle's token count) | N (fixed)")})
    repair_rounds: int = field(default=0, metadata={"doc": "after generation, repair failed samples for up to N "
                                                            "rounds and report pass@1 before and after"})
    repair_spans: int = field(default=1, metadata={"doc": "repair: spans (lines) re-masked per round"})

    def __post_init__(self) -> None:
        if self.infill_length not in ("auto", "oracle") and not (self.infill_length.isdigit()
                                                                 and int(self.infill_length) > 0):
            raise ConfigError(f"infill_length must be auto, oracle or a positive integer, got {self.infill_length!r}")
        if isinstance(self.repair_rounds, bool) or not isinstance(self.repair_rounds, int) or self.repair_rounds < 0:
            raise ConfigError(f"repair_rounds must be an integer >= 0, got {self.repair_rounds!r}")
        if isinstance(self.repair_spans, bool) or not isinstance(self.repair_spans, int) or self.repair_spans < 1:
            raise ConfigError(f"repair_spans must be a positive integer, got {self.repair_spans!r}")

    def recorded(self) -> dict:
        """What eval_config.json holds for these settings: nothing when they are the defaults."""
        return {} if self == EditConfig() else {"edit": dataclasses.asdict(self)}
