"""agora's runtime (internal: users ``import agora``).

Layers, each package importing only those above it in this list (``tests/test_layering.py``
checks it, with ``shm`` below them all and ``coordination`` between the core and the
composition root)::

    errors.py, config.py   the error hierarchy and codes; agora.toml and the run's layout
    observability/         trace context, events, telemetry, event log, metrics, traces
    wire/                  frames and limits, socket plumbing, private paths, the Client
    supervision/           OTP child specs, restart budget, the tree, forking
    registry/              who is alive and what they can do (local, partitioned, redis)
    tasks/                 tasks, pipelines, the journal, payloads, the scheduler
    guards/                external-service guards: retry, breaker, limiter, cache, batching
    agents/                the Agent API and the agent process
    pools/                 agent pools in the tree
    coordinator/           the coordinator's loop, command table and ServiceHost surface
    scaling/               the pure scaling policy, sampling, the scaler service
    daemon/                the root process, its resources, the composition root
    api/                   the Python API: connect(), start(), futures (``import agora``)
    cli/                   the ``agora`` command

Only ``daemon/`` and ``cli/`` import ``coordination`` (the composition root hands the
coordinator its services as objects).  Coordinator-side services of the runtime
(``scaling.service``, ``observability.service``) see the coordinator only through
``coordinator.host.ServiceHost``.
"""
