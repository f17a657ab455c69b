"""The workload agents of perf/agents.py, under the name the tests' configs use."""

from perf.agents import Echo, Vectors

__all__ = ["Echo", "Vectors"]
