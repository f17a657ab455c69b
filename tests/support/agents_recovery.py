"""An agent whose start-up fails while a flag file exists: the pool-recovery tests' cause
of a crash loop, removed by deleting the file (``<AGORA_HOME>/crash-at-start``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agora import Agent, capability

__all__ = ["Fragile", "Stubborn", "crash_flag"]


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


class Stubborn(Agent):
    """Handlers that never look at their cancellation: they end only when killed."""

    @capability("ignore")
    def ignore(self, input: Any, task: Any) -> Any:
        time.sleep(float(input.get("s", 60.0)))  # never checks task.cancelled
        return {"pid": os.getpid()}

    @capability("hang_once")
    def hang_once(self, input: Any, task: Any) -> Any:
        """The first attempt hangs (past any timeout_s); a retry answers at once."""
        if task.attempt == 1:
            time.sleep(60.0)
        return {"pid": os.getpid(), "attempt": task.attempt}

    @capability("whoami")
    def whoami(self, input: Any, task: Any) -> Any:
        return {"pid": os.getpid()}
