"""What an exporter needs: a missing package is a clear error naming the task and the extra."""

from __future__ import annotations

import pytest

from frametok.errors import ExportError
from frametok.exporters._deps import package_versions, require_modules


def test_a_missing_module_names_the_task_and_the_extra() -> None:
    with pytest.raises(ExportError, match=r"making a thing needs json, no_such_module_xyz .*frametok\[export\]"):
        require_modules(("json", "no_such_module_xyz"), "making a thing")
    require_modules(("json",), "making a thing")  # all there: nothing raised


def test_versions_of_installed_and_missing_distributions() -> None:
    found = package_versions(["numpy", "no-such-distribution-xyz"])
    assert found["numpy"][0].isdigit()
    assert found["no-such-distribution-xyz"] == "not installed"
