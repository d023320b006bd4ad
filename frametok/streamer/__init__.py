"""The pipeline, one subpackage per stage, in the order a frame takes.

``ipc``: what crosses between its processes (the shared-memory frame ring, control notices);
``source``: producer processes (decode, the pacer, writing frames into the ring);
``worker``: the worker process (gathering and batching, the model lane, soft-token state, queries,
previews, its metrics endpoint); ``delivery``: the publisher (live PUB, the lossless router, CURVE,
endpoint checks); ``supervision``: the supervisor (processes, restarts, health, progress, summary).
A stage imports only the stages before it, ``ipc`` and the layers below ``streamer``.
"""
