"""Worker stage: gather frames from the rings into batches, run the models, turn outputs into packets for
the hub.

Model loading (``models``), per-stream state (``streams``), notice intake (``intake``), gathering and
admission (``gather``), the model lane (``lane``), the publish path (``emit``), soft tokens, queries and
previews; ``process`` runs them. Imports ``ipc``, ``delivery`` (its feed into the hub), ``models`` and the
wire format.
"""
