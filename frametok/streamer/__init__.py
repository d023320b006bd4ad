"""The pipeline, one subpackage per stage, in the order a frame takes.

``ipc``: what crosses between its processes (the shared-memory frame ring, control notices, the
worker-hub messages); ``source``: producer processes (decode, the pacer, writing frames into the ring);
``delivery``: the run's publisher process (the hub: live PUB, the lossless router, CURVE, endpoint checks,
metrics) and the workers' feed into it; ``worker``: worker processes (gathering and batching, the model
lane, soft-token state, queries, previews); ``supervision``: the supervisor (processes, stream
assignment, restarts, health, progress, summary). A stage imports only the stages before it (in the
order ipc, source, delivery, worker, supervision) and the layers below ``streamer``.
"""
