"""Delivery stage: the publisher (live PUB/SUB, the lossless ROUTER with credit), CURVE, endpoint checks.

Imports the wire format, the config and the errors; nothing else of the pipeline.
"""
