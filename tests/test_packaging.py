"""What `pip install edgewatch` ships and promises, checked from the source tree without building.

The wheel itself (py.typed under edgewatch/, LICENSE under the dist-info's licenses/, no tests or
benchmarks) follows from the pyproject settings checked here; the packaging section of
docs/design.md says how to build it and list its contents.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import edgewatch

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

# Developer tools that a user's `pip install 'edgewatch[all]'` must not pull in.
DEV_TOOLS = {"pytest", "scikit-learn", "threadpoolctl"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def expand_extra(name: str) -> set[str]:
    """Every distribution an extra pulls in, following `edgewatch[...]` self-references."""
    extras = PROJECT["optional-dependencies"]
    names: set[str] = set()
    for requirement in extras[name]:
        nested = re.fullmatch(r"edgewatch\[([^\]]+)\]", requirement.replace(" ", ""))
        if nested:
            for inner in nested.group(1).split(","):
                names |= expand_extra(inner)
        else:
            names |= requirement_names([requirement])
    return names


def test_license_file_is_the_apache_2_license_the_metadata_declares():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
    # PEP 639: an SPDX expression replaces the License classifier, and setuptools refuses both.
    assert not any(classifier.startswith("License ::") for classifier in PROJECT["classifiers"])
    assert int(re.search(r"setuptools>=(\d+)", " ".join(PYPROJECT["build-system"]["requires"])).group(1)) >= 77


def test_package_is_typed_and_ships_its_marker():
    assert (Path(edgewatch.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["edgewatch"]
    assert "Typing :: Typed" in PROJECT["classifiers"]


def test_wheel_holds_the_package_only():
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["edgewatch*"]


def test_metadata_has_classifiers_and_keywords():
    classifiers, keywords = PROJECT["classifiers"], PROJECT["keywords"]
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert "Programming Language :: Python :: 3" in classifiers
    assert {"pytorch", "hessian", "edge of stability", "sharpness"} <= set(keywords)
    # URLs are left out until the project has a public home: an invented URL would be worse.
    assert all(url.startswith("https://") for url in PROJECT.get("urls", {}).values())


def test_all_extra_has_every_integration_and_no_dev_tool():
    everything = expand_extra("all")
    assert not everything & DEV_TOOLS, f"[all] pulls dev tools: {sorted(everything & DEV_TOOLS)}"
    for extra in ("transformers", "wandb", "tensorboard", "mlflow", "lightning", "plot"):
        assert expand_extra(extra) <= everything, extra
    assert DEV_TOOLS <= expand_extra("dev")


def test_torch_floor_is_the_oldest_tested():
    """2.4: the oldest torch the suite has run on (torch._foreach_norm's dtype argument came in 2.4)."""
    assert "torch>=2.4" in PROJECT["dependencies"]


# Spelled in pieces so that this file does not contain what it looks for.
FORBIDDEN = ("../" + "shared", "DESIGN" + ".md", "STYLE" + ".md")
SCANNED = ["edgewatch", "tests", "benchmarks", "examples", "docs", "README.md", "Makefile", "pyproject.toml"]


def project_files():
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # figures and other binary files
            continue
        offenders += [f"{path.relative_to(ROOT)}: {word}" for word in FORBIDDEN if word in text]
    assert not offenders, "the project must carry its own documentation:\n" + "\n".join(offenders)


def test_docs_index_links_resolve():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+\.md)\)", index):
        assert (ROOT / "docs" / target).is_file(), target
