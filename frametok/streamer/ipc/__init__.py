"""What crosses between the pipeline's processes: the shared-memory frame ring and the control notices.

Imports nothing of the pipeline; every stage imports it.
"""
