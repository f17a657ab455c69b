"""The workload agents of perf/_agents.py, under the name the tests' configs use."""

from perf._agents import Echo, Vectors

__all__ = ["Echo", "Vectors"]
