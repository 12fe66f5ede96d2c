"""`pip install edgewatch` needs only torch, numpy and scipy: extras are imported when used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgewatch import MissingExtraError
from edgewatch.extras import require

EXTRAS = ("wandb", "tensorboard", "mlflow", "lightning", "transformers", "matplotlib", "sklearn", "pandas")


def test_importing_edgewatch_imports_no_extra():
    code = (
        "import sys, edgewatch, edgewatch.loggers, edgewatch.cli, edgewatch.integrations\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({EXTRAS!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_missing_extra_is_one_line_that_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an absent package looks like to import
    with pytest.raises(MissingExtraError) as caught:
        require("wandb", "wandb", what="the W&B logger")
    assert str(caught.value) == "the W&B logger needs 'wandb', which is not installed: pip install 'edgewatch[wandb]'"


def test_a_broken_dependency_inside_an_installed_extra_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "installed_extra").mkdir()
    (tmp_path / "installed_extra" / "__init__.py").write_text("import a_module_it_needs_but_lacks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        require("installed_extra", "x")
    assert not isinstance(caught.value, MissingExtraError) and caught.value.name == "a_module_it_needs_but_lacks"
