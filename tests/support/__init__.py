"""Test support: fakes and stand-ins shared by tests and benchmarks (never collected as tests)."""
