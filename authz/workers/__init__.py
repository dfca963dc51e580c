"""Several serving processes in one pod (``server.workers``).

A supervisor (``supervisor.py``) starts N workers, each a whole sidecar with its own event loop
listening on its own gRPC port (``plan.py``: ports from ``server.grpc_address``'s upward, the
HTTP port skipped), and restarts one that dies. Envoy spreads Check and Process over those ports
(the ``authz`` cluster lists one endpoint per worker). The workers share nothing but the store;
what one Check leaves for its Process in memory (a rewritten body, the placeholders to restore)
is fetched from the worker that holds it when Process lands elsewhere (``peers.py``). The
supervisor serves the one HTTP port (``front.py``): one readiness, one ``/metrics`` summed over
the workers, every worker's audit head and keys; the rest is answered by a worker.
"""
