"""Agents used by the daemon tests: each does real work or a real failure."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from agora import Agent, capability


class Echo(Agent):
    @capability("echo")
    def echo(self, input: Any, task: Any) -> Any:
        return {"echo": input, "pid": os.getpid(), "attempt": task.attempt}

    @capability("add")
    def add(self, input: Any, task: Any) -> Any:
        return input["a"] + input["b"]

    @capability("sleep")
    def sleep(self, input: Any, task: Any) -> Any:
        """Sleeps; with ``"signal_file"`` it first writes its pid there (the test kills it)."""
        if input.get("pid_file"):
            with open(input["pid_file"], "a") as f:
                f.write(f"{os.getpid()} {task.attempt}\n")
        time.sleep(float(input.get("s", 0.1)))
        return {"slept": input.get("s"), "pid": os.getpid(), "attempt": task.attempt}

    @capability("flaky")
    def flaky(self, input: Any, task: Any) -> Any:
        if task.attempt < int(input.get("succeed_on", 2)):
            raise RuntimeError(f"flaky failure on attempt {task.attempt}")
        return {"attempt": task.attempt}

    @capability("poison")
    def poison(self, input: Any, task: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)


class Vectors(Agent):
    def setup(self, ctx: Any) -> None:
        self.ctx = ctx

    @capability("colsum")
    def colsum(self, input: Any, task: Any) -> Any:
        arr = self.ctx.array(input["name"])
        return {"sum": float(arr.sum()), "writeable": bool(arr.flags.writeable)}
