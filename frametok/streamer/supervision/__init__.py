"""Supervision: start the run's processes, watch and restart them, health endpoints, progress, the summary.

Imports every stage (it starts them) and ``models`` (to check them before anything starts).
"""
