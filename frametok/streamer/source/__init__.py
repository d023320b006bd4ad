"""Producer stage: open and decode a source (file, camera, network stream, image folder), pace it,
write its frames into the ring.

Imports ``ipc``, the config and the errors.
"""
