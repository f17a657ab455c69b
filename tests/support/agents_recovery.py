"""An agent whose start-up fails while a flag file exists: the pool-recovery tests' cause
of a crash loop, removed by deleting the file (``<AGORA_HOME>/crash-at-start``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agora import Agent, capability

__all__ = ["Fragile", "crash_flag"]


def crash_flag(home: str | Path) -> Path:
    return Path(home) / "crash-at-start"


class Fragile(Agent):
    def setup(self, ctx: Any) -> None:
        flag = crash_flag(os.environ["AGORA_HOME"])
        if flag.exists():
            raise RuntimeError(f"crash flag {flag} is present")

    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        return {"done": input, "pid": os.getpid()}

    @capability("die")
    def die(self, input: Any, task: Any) -> Any:
        os._exit(3)
