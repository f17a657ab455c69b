"""Where agora keeps its state and its sockets, and how those directories are kept private.

Two directories, resolved afresh on every call (so a test's ``monkeypatch.setenv`` works):

``home_dir(home)`` -- the *state directory* (journal, event log, config ``agora.toml``):
    1. the ``home`` argument (the CLI's ``--home``),
    2. ``$AGORA_HOME``,
    3. ``$XDG_STATE_HOME/agora`` when ``XDG_STATE_HOME`` is set to an absolute path
       (the XDG spec says relative values are invalid and must be ignored),
    4. ``~/.local/state/agora`` (the XDG default for state).

``runtime_dir()`` -- where sockets live (may be a tmpfs, may vanish on logout):
    1. ``$AGORA_RUNTIME_DIR``,
    2. ``$XDG_RUNTIME_DIR/agora`` when ``XDG_RUNTIME_DIR`` is set and absolute,
    3. ``<tempfile.gettempdir()>/agora-<uid>``.

One daemon serves one home.  Its sockets go in ``socket_dir(home)`` =
``<runtime_dir>/<12 hex digits of blake2b(realpath(home))>/`` so that several homes
(every test has its own) never share a socket, and so that the socket path stays short:
``sun_path`` holds 108 bytes including the terminating NUL, a home path could be far longer,
a 12-hex digest cannot.  ``control_socket(home)`` is ``socket_dir(home) / "ctl.sock"``;
``check_socket_path`` refuses (InvalidInput) a path that would not fit, naming the knob
(``AGORA_RUNTIME_DIR``) to shorten it.  48 bits of digest make a collision between two
homes of one user a non-event.

Privacy (RELIABILITY 21: the control channel is the user's alone).  ``ensure_private_dir``
creates a directory (and missing parents) with mode 0700 under umask 077, and for a
directory that already exists:

* refuses (PermissionDenied) one owned by another uid -- someone else could have planted
  a socket there or could read ours;
* refuses a symlink or a non-directory at that path (a planted symlink in a shared
  ``/tmp`` is the classic attack);
* refuses a sticky directory (``AGORA_RUNTIME_DIR=/tmp`` must not chmod /tmp);
* fixes the mode to 0700 when we own it but it is group/world-accessible (or lacks u+rwx):
  we own it, so nobody else could have changed it behind our back after the fix.

The checks run on an ``O_NOFOLLOW | O_DIRECTORY`` descriptor (``fstat``/``fchmod``), so the
directory inspected is the one fixed.  The umask is process-wide; it is changed only around
the ``mkdir`` calls (the daemon creates its directories while still single-threaded).
The decision itself is ``refusal(st, uid)``, a pure function of a stat result.

Nothing here creates the home or the socket directory implicitly: the daemon calls
``ensure_socket_dir``/``ensure_private_dir``; a Client only computes paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import InvalidInput, PermissionDenied

__all__ = [
    "home_dir", "runtime_dir", "socket_dir", "control_socket", "check_socket_path",
    "ensure_private_dir", "ensure_socket_dir", "refusal", "needs_mode_fix", "SUN_PATH_MAX",
]

#: The sockets of a run, in ``socket_dir(home)``: one name each, read by RunPaths too.
CONTROL_SOCKET = "ctl.sock"      # clients (the user's Client and CLI)
ROOT_SOCKET = "root.sock"        # the coordinator's line to the root
AGENTS_SOCKET = "agents.sock"    # agents' hellos, results and calls
EVENTS_SOCKET = "events.sock"    # event batches to the telemetry process

#: Longest socket path in bytes: ``sizeof(sun_path)`` on Linux is 108, one byte is the NUL.
SUN_PATH_MAX = 107
_DIGEST_BYTES = 6  # 12 hex digits


def _absolute_env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value and os.path.isabs(value) else None


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: ``home`` > $AGORA_HOME > $XDG_STATE_HOME/agora > ~/.local/state/agora."""
    if home is not None and str(home):
        return Path(home).expanduser().absolute()
    if os.environ.get("AGORA_HOME"):
        return Path(os.environ["AGORA_HOME"]).expanduser().absolute()
    xdg = _absolute_env("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "agora"
    return Path.home() / ".local" / "state" / "agora"


def runtime_dir() -> Path:
    """Where sockets live: $AGORA_RUNTIME_DIR > $XDG_RUNTIME_DIR/agora > <tmp>/agora-<uid>."""
    if os.environ.get("AGORA_RUNTIME_DIR"):
        return Path(os.environ["AGORA_RUNTIME_DIR"]).expanduser().absolute()
    xdg = _absolute_env("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "agora"
    return Path(tempfile.gettempdir()) / f"agora-{os.getuid()}"


def socket_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The per-daemon socket directory: ``<runtime_dir>/<12 hex of blake2b(realpath(home))>``."""
    real = os.path.realpath(home_dir(home))
    digest = hashlib.blake2b(os.fsencode(real), digest_size=_DIGEST_BYTES).hexdigest()
    return runtime_dir() / digest


def control_socket(home: str | os.PathLike[str] | None = None) -> Path:
    """The daemon's control socket for ``home``; refused if too long for ``sun_path``."""
    path = socket_dir(home) / CONTROL_SOCKET
    check_socket_path(path)
    return path


def check_socket_path(path: str | os.PathLike[str]) -> None:
    """Raise InvalidInput if ``path`` does not fit in a Unix socket address."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise InvalidInput(
            f"socket path {os.fspath(path)!r} is {size} bytes; Unix sockets allow {SUN_PATH_MAX}",
            hint="set AGORA_RUNTIME_DIR to a shorter directory (e.g. /tmp/agora-$UID)")


def refusal(st: os.stat_result, uid: int) -> str | None:
    """Why a directory with stat ``st`` may not serve as ``uid``'s private dir, or None.

    A wrong mode is not a refusal when ``uid`` owns the directory: the caller fixes it.
    """
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink (a planted link could point anywhere)"
    if not stat.S_ISDIR(st.st_mode):
        return "exists and is not a directory"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & stat.S_ISVTX:
        return "is a shared sticky directory (like /tmp), not a private one"
    return None


def needs_mode_fix(st: os.stat_result) -> bool:
    """True if the directory is group/world-accessible or lacks u+rwx."""
    return stat.S_IMODE(st.st_mode) != 0o700


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _refuse(path: str, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"refusing to use {path!r} as a private directory: it {why}",
        hint="remove or rename it (or point AGORA_HOME / AGORA_RUNTIME_DIR elsewhere); "
             "agora's directories must be yours alone, mode 0700")


def _open_dir(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        st = os.lstat(path)  # explain symlink / not-a-directory; re-raises if it vanished
        raise _refuse(path, refusal(st, os.getuid()) or f"cannot be opened ({e})") from e


def _check_and_fix(path: str) -> None:
    fd = _open_dir(path)
    try:
        st = os.fstat(fd)
        why = refusal(st, os.getuid())
        if why:
            raise _refuse(path, why)
        if needs_mode_fix(st):
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) mode 0700, or check an existing one.

    Raises PermissionDenied for a directory owned by another uid, a symlink or a
    non-directory; silently fixes the mode of a directory we own.
    """
    p = Path(path).absolute()
    with _private_umask():
        try:
            os.makedirs(p, mode=0o700)
        except FileExistsError:
            pass  # checked below, whatever it is
    _check_and_fix(str(p))
    return p


def ensure_socket_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Create/check the runtime dir and ``socket_dir(home)``, both private; return the latter."""
    ensure_private_dir(runtime_dir())
    return ensure_private_dir(socket_dir(home))
