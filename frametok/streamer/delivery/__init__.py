"""Delivery stage: the run's publisher process (the hub: live PUB/SUB and the lossless ROUTER with credit,
for every worker), the worker's feed into it, CURVE, endpoint checks and the run's Prometheus metrics.

Imports ``ipc``, the wire format, the config and the errors; nothing else of the pipeline.
"""
