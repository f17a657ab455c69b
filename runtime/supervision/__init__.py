"""Supervision with Erlang/OTP semantics: child specs (``child_spec``), restart intensity as
a pure function (``restart_budget``), the supervision tree inside the root process
(``supervisor``), and forking one child, the only place a process is started
(``forking``).

May import: ``runtime.errors``.
"""

from runtime.supervision.child_spec import ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.supervision.restart_budget import add_restart
from runtime.supervision.supervisor import StartFailed, Supervisor, Tree

__all__ = ["ChildSpec", "Restart", "Strategy", "SupervisorSpec", "add_restart", "StartFailed",
           "Supervisor", "Tree"]
