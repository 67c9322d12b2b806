"""Samplers: ids in, ids out, streaming generators and decode traces. They know nothing about text."""

from unmask.decoding.dispatch import decode, decode_canvas, decode_stream
from unmask.decoding.reference import denoise, denoise_stream
from unmask.decoding.steps import DecodeResult, DecodeStats, DecodeStep
from unmask.decoding.trace import DecodeTrace, StepRecord

__all__ = ["DecodeResult", "DecodeStats", "DecodeStep", "DecodeTrace", "StepRecord", "decode", "decode_canvas",
           "decode_stream", "denoise", "denoise_stream"]
