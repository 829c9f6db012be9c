"""docs/coming-from-pykeops.md: every jaxkeops name it lists in backticks exists.

Names are `jaxkeops.X[.Y...]` (a module attribute path, submodules imported on the way) and
`LazyTensor.m` / `ComplexLazyTensor.m` (a class attribute)."""

import importlib
import pathlib
import re

import jaxkeops

PAGE = pathlib.Path(__file__).parent.parent / "docs" / "coming-from-pykeops.md"
CLASSES = {"LazyTensor": jaxkeops.LazyTensor, "ComplexLazyTensor": jaxkeops.ComplexLazyTensor}


def _listed_names() -> set[str]:
    names = set()
    for code in re.findall(r"`([^`]+)`", PAGE.read_text()):
        for name in re.findall(r"\b((?:jaxkeops|LazyTensor|ComplexLazyTensor)(?:\.\w+)+)", code):
            names.add(name)
    return names


def _resolve(name: str):
    head, *rest = name.split(".")
    obj = jaxkeops if head == "jaxkeops" else CLASSES[head]
    path = head
    for part in rest:
        path += "." + part
        if not hasattr(obj, part) and head == "jaxkeops":
            importlib.import_module(path)  # a submodule not imported by the package
        obj = getattr(obj, part)
    return obj


def test_page_lists_names():
    names = _listed_names()
    # The page names the whole public surface a porter meets, not a handful.
    assert len(names) > 40, sorted(names)
    assert {"jaxkeops.Genred", "LazyTensor.grad", "LazyTensor.diff"} <= names


def test_every_listed_name_exists():
    missing = []
    for name in sorted(_listed_names()):
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert not missing, f"docs/coming-from-pykeops.md lists names jaxkeops lacks: {missing}"


def test_readme_links_the_page():
    readme = (PAGE.parent.parent / "README.md").read_text()
    assert "docs/coming-from-pykeops.md" in readme
