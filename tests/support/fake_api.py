"""The fake external API, for tests: it lives in runtime.demo.fake_api (``agora demo`` and
perf/pipelines.py use it too)."""

from runtime.demo.fake_api import FakeAPI

__all__ = ["FakeAPI"]
