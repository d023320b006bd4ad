"""What an exporter needs installed, and the versions it records in the manifest."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence

from ..errors import ExportError

__all__ = ["package_versions", "require_modules"]


def require_modules(modules: Sequence[str], task: str) -> None:
    """Import ``modules`` (to check they are there); an :class:`ExportError` naming ``task`` if one is not."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"{task} needs {', '.join(modules)} ({exc}); install them with `pip install 'frametok[export]'`"
        ) from exc


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    """The installed version of each distribution in ``packages`` ("not installed" when missing)."""
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
