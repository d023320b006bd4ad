"""Supervision: start the run's processes (hub, workers, producers), assign streams to workers, watch and
restart them, health endpoints, progress, the summary.

Imports every stage (it starts them) and the registry (to check models before anything starts).
"""
