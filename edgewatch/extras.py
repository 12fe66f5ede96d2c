"""Optional dependencies: imported only when used, with a one-line error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, *, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'edgewatch[extra]'``.

    >>> require("math", "none").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        if error.name is not None and error.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: show that error as is
        raise MissingExtraError(
            f"{what or module} needs {top!r}, which is not installed: pip install 'edgewatch[{extra}]'"
        ) from None
