"""Worker stage: gather frames from the rings into batches, run the models, turn outputs into packets.

Gathering and admission (``gather``), the model lane (``lane``), per-stream soft-token and tracker
state (``tokens``, ``streams``), the publish path (``emit``), queries, previews and the worker's
Prometheus endpoint. Imports ``ipc``, ``delivery`` (it publishes), ``models`` and the wire format.
"""
