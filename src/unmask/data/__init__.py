"""Benchmark data: loaders for the shipped code benchmarks and the procedural synthetic benchmark."""

from unmask.data.benchmarks import (
    BENCHMARKS,
    Task,
    load_benchmark,
    read_evalplus_samples,
    write_evalplus_samples,
)
from unmask.data.synthetic import composition_key, synthetic_tasks

__all__ = [
    "BENCHMARKS",
    "Task",
    "composition_key",
    "load_benchmark",
    "read_evalplus_samples",
    "synthetic_tasks",
    "write_evalplus_samples",
]
