"""The workload agents of perf/_agents_market.py, under the name the tests' configs use."""

from perf._agents_market import Decliner, Failing, Fast, Haggler, Mute, Slow, Unreliable

__all__ = ["Fast", "Slow", "Unreliable", "Failing", "Decliner", "Mute", "Haggler"]
