"""What a command is made of: argument checks that name the argument, and the
:class:`Deferred` reply a command returns when its answer comes in a later turn.

Every command of the control channel (and every coordinator service's command) takes an
``args`` object, checks it with :func:`only` (unknown keys refused) and :func:`arg` (each
value type-checked, booleans are not integers), and returns a JSON value or a Deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.errors import InvalidInput, to_wire

__all__ = ["Deferred", "arg", "only", "int_arg", "num_arg", "str_arg", "list_arg",
           "MAX_ID", "MAX_TEXT", "MAX_LIST"]

MAX_ID = 256          # task/pipeline ids, registry keys, capability and agent names
MAX_TEXT = 4096       # paths, filters and other free text
MAX_LIST = 100_000    # ids of one wait_all / tasks of one submit_many

_MISSING = object()


def arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """One argument, type-checked; booleans are not integers."""
    if name not in args:
        if default is _MISSING:
            raise InvalidInput(f"argument {name!r} is missing", field=name)
        return default
    value = args[name]
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise InvalidInput(f"argument {name!r}: expected {getattr(kind, '__name__', kind)}, "
                           f"got {type(value).__name__}", field=name)
    return value


def int_arg(args: dict[str, Any], name: str, default: Any = _MISSING, *,
            lo: int = 0, hi: int = 2**31) -> Any:
    """An integer argument in ``[lo, hi]`` (``events --limit -1`` is refused by name)."""
    value = arg(args, name, int, default)
    if value is not None and value is not default and not lo <= value <= hi:
        raise InvalidInput(f"argument {name!r}: {value} is out of range [{lo}, {hi}]", field=name)
    return value


def num_arg(args: dict[str, Any], name: str, default: Any = _MISSING, *,
            lo: float = 0.0, hi: float = 365 * 86400.0) -> Any:
    """A finite number in ``[lo, hi]`` (timeouts: seconds, at most a year)."""
    value = arg(args, name, (int, float), default)
    if value is not None and value is not default and not lo <= value <= hi:  # NaN fails too
        raise InvalidInput(f"argument {name!r}: {value} is out of range [{lo}, {hi}]", field=name)
    return value


def str_arg(args: dict[str, Any], name: str, default: Any = _MISSING, *,
            max_len: int = MAX_ID, min_len: int = 1) -> Any:
    """A string of ``min_len``..``max_len`` characters without NUL (paths, names, ids)."""
    value = arg(args, name, str, default)
    if value is None or value is default:
        return value
    if not min_len <= len(value) <= max_len:
        raise InvalidInput(f"argument {name!r}: a string of {len(value)} characters; "
                           f"{min_len}-{max_len} expected", field=name)
    if "\x00" in value:
        raise InvalidInput(f"argument {name!r} contains a NUL character", field=name)
    return value


def list_arg(args: dict[str, Any], name: str, default: Any = _MISSING, *,
             max_len: int = MAX_LIST) -> Any:
    value = arg(args, name, list, default)
    if isinstance(value, list) and len(value) > max_len:
        raise InvalidInput(f"argument {name!r}: {len(value)} items, at most {max_len}", field=name)
    return value


def only(args: dict[str, Any], *allowed: str) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown argument(s) {unknown}", hint=f"allowed: {sorted(allowed)}")


class Deferred:
    """A reply that comes later: ``resolve({"ok": ...})`` or ``fail(exc)``, or a deadline."""

    def __init__(self, deadline: float | None = None, on_expire: Callable[[], Exception] | None = None):
        self.deadline = deadline
        self.on_expire = on_expire
        self._cb: Callable[[dict[str, Any]], None] | None = None
        self._msg: dict[str, Any] | None = None
        self._early: list[dict[str, Any]] = []  # interim frames sent before bind()
        self.done = False

    def bind(self, cb: Callable[[dict[str, Any]], None]) -> None:
        """Where the reply goes; a Deferred finished before it was bound delivers now."""
        self._cb = cb
        for msg in self._early:
            cb(msg)
        self._early = []
        if self.done and self._msg is not None:
            cb(self._msg)

    def notify(self, value: Any) -> None:
        """An interim ``more`` frame before the final reply (the wire's stream shape):
        ``submit`` with ``ack`` tells the id as soon as the task is durable."""
        if self.done:
            return
        if self._cb is None:
            self._early.append({"more": value})
        else:
            self._cb({"more": value})

    def resolve(self, value: Any) -> None:
        self._finish({"ok": value})

    def fail(self, exc: Exception) -> None:
        self._finish({"error": to_wire(exc)})

    def _finish(self, msg: dict[str, Any]) -> None:
        if self.done:
            return
        self.done = True
        self._msg = msg
        if self._cb is not None:
            self._cb(msg)


