"""Tasks and their lifecycle: the task model and its state machine (``task``), pipelines
(``pipeline``), the durable journal in SQLite (``journal``), large inputs and results in
the payload arena (``payloads``), pure load-balancing functions (``balancing``) and the
scheduler the coordinator drives: ready queues, agent links, attempts, retries, dead
letters and the built-in allocation policies (``scheduler``).

May import: ``runtime.errors``, ``runtime.observability``, ``shm``.
"""

from runtime.tasks.journal import Journal
from runtime.tasks.pipeline import Pipeline, parse_pipeline
from runtime.tasks.scheduler import POLICIES, TAKEN, Scheduler, TaskRun
from runtime.tasks.task import ACTIVE, STATES, TERMINAL, TaskSpec, parse_task

__all__ = ["Journal", "Pipeline", "parse_pipeline", "TAKEN", "POLICIES", "Scheduler", "TaskRun",
           "ACTIVE", "STATES", "TERMINAL", "TaskSpec", "parse_task"]
