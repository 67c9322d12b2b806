"""Editing with a dLLM: infilling (masks anywhere), mask placeholders in prompts, test-guided repair."""

from unmask.editing.infill import AUTO_LENGTHS, InfillResult, build_canvas, fim_segments, infill, span_scores
from unmask.editing.placeholders import Hole, Segment, has_holes, parse_placeholders
from unmask.editing.repair import RepairConfig, RepairResult, RepairRound, repair

__all__ = ["AUTO_LENGTHS", "Hole", "InfillResult", "RepairConfig", "RepairResult", "RepairRound", "Segment",
           "build_canvas", "fim_segments", "has_holes", "infill", "parse_placeholders", "repair", "span_scores"]
