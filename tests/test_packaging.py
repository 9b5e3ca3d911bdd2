"""Packaging and publishing: the wheel, its metadata, citation files, the API reference, the CI workflow."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml

import posenc

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What a wheel is built from: the package and the files pyproject.toml and MANIFEST.in name.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CITATION.cff", "CHANGELOG.md")
BASE_REQUIREMENTS = {"numpy", "tqdm", "pyyaml"}
MAKEFILE_EXTRAS = ("torch", "haiku", "triton", "data", "models", "plot", "book", "dev")


def requirement_name(req: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


# --- metadata --------------------------------------------------------------------------------
def test_version_agrees():
    assert PYPROJECT["project"]["version"] == posenc.__version__
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(cff["version"]) == posenc.__version__
    assert f"## [{posenc.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_core_dependencies_stay_light():
    deps = {requirement_name(d) for d in PYPROJECT["project"]["dependencies"]}
    assert deps == BASE_REQUIREMENTS
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(MAKEFILE_EXTRAS) <= set(extras)  # the Makefile installs .[torch,haiku,...,dev]
    assert "jupyter-book" in {requirement_name(r) for r in extras["book"]}
    makefile = (ROOT / "Makefile").read_text()
    assert f"EXTRAS := {','.join(MAKEFILE_EXTRAS)}" in makefile


def test_citation_and_licence():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["license"] == "MIT" == PYPROJECT["project"]["license"]
    paper = cff["preferred-citation"]
    assert paper["title"] == "Learning Regularized Positional Encoding for Molecular Prediction"
    assert [a["family-names"] for a in paper["authors"]] == ["Gao", "Gao", "Xiao", "Wang", "Wang", "Xiang"]
    assert paper["year"] == 2022 and "2211.12773" in paper["url"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


# --- the wheel -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (so the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in WHEEL_SOURCES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "posenc", src / "posenc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--quiet", "-w", str(dist), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = dist.glob("posenc-*.whl")
    return path


def test_wheel_holds_every_module_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "posenc/py.typed" in names
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "posenc").rglob("*.py") if "__pycache__" not in p.parts}
    assert {p for p in source if p.endswith("/__init__.py")} >= {"posenc/__init__.py", "posenc/torch/__init__.py",
                                                                "posenc/haiku/__init__.py", "posenc/data/__init__.py"}
    assert source == {n for n in names if n.endswith(".py")}
    dist_info = f"posenc-{posenc.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "posenc = posenc.cli:main" in zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(f"posenc-{posenc.__version__}.dist-info/METADATA").decode())
    assert meta["Name"] == "posenc" and meta["Version"] == posenc.__version__
    requires = meta.get_all("Requires-Dist")
    base = {requirement_name(r) for r in requires if "extra ==" not in r}
    assert base == BASE_REQUIREMENTS  # no torch, jax or jupyter-book for `pip install posenc`
    assert {"torch", "jax", "dm-haiku", "jupyter-book"} <= {requirement_name(r) for r in requires if "extra ==" in r}
    assert set(MAKEFILE_EXTRAS) <= set(meta.get_all("Provides-Extra"))


# --- the API reference -----------------------------------------------------------------------
AUTOMODULE = re.compile(r"^\.\. automodule:: (\S+)\n((?:   :[^\n]*\n?)*)", re.M)
PUBLIC_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(posenc.__path__, "posenc.")
    if not any(part.startswith("_") for part in m.name.split("."))
)


def api_directives() -> dict[str, dict[str, str]]:
    """``{module: {option: value}}`` of every ``automodule`` in book/api/."""
    found: dict[str, dict[str, str]] = {}
    for page in sorted((ROOT / "book" / "api").glob("*.md")):
        for name, block in AUTOMODULE.findall(page.read_text()):
            assert name not in found, f"{name} is documented twice"
            found[name] = dict(re.findall(r"^   :([\w-]+):[ ]*(.*)$", block, re.M))
    return found


def public_names(module) -> list[str]:
    """``__all__``, or else the public classes and functions defined in the module itself."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, o in vars(module).items() if not n.startswith("_")
            and (inspect.isclass(o) or inspect.isfunction(o)) and o.__module__ == module.__name__]


def test_api_reference_documents_every_public_name_once():
    directives = api_directives()
    assert set(PUBLIC_MODULES) <= set(directives), f"not in book/api/: {sorted(set(PUBLIC_MODULES) - set(directives))}"
    documented: dict[int, str] = {}
    for name, options in directives.items():
        if "members" not in options:
            continue  # the module's docstring only
        module = importlib.import_module(name)
        excluded = {e.strip() for e in options.get("exclude-members", "").split(",") if e.strip()}
        for attr in set(public_names(module)) - excluded:
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                where = f"{name}.{attr}"
                assert id(obj) not in documented, f"{where} is also documented as {documented[id(obj)]}"
                documented[id(obj)] = where
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in public_names(module):
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert id(obj) in documented, f"{name}.{attr} is in no API page"


def test_api_pages_are_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    pages = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "book" / "api").glob("*.md")}
    assert pages <= files
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon"} <= set(sphinx["extra_extensions"])
    for ext, path in sphinx["local_extensions"].items():
        assert (ROOT / path / f"{ext}.py").is_file()


def test_dedupe_scripts_extension():
    from sphinx.builders.html._assets import _JavaScript

    spec = importlib.util.spec_from_file_location("dedupe_scripts", ROOT / "book" / "_ext" / "dedupe_scripts.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    thebe = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript("a.js"), _JavaScript(None, body=thebe), _JavaScript("t.js", **{"async": "async"}),
               _JavaScript("", body=thebe), _JavaScript("a.js"), _JavaScript("t.js"), _JavaScript("", body="let y")]
    context = {"script_files": scripts}
    ext.dedupe_page_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] == [scripts[0], scripts[1], scripts[2], scripts[5], scripts[6]]


# --- the CI workflow -------------------------------------------------------------------------
def test_book_workflow_structure():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert triggers["push"]["branches"] == ["main"] and "pull_request" in triggers
    assert "concurrency" in wf
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    uses = {s["uses"].split("@")[0]: s for s in build["steps"] if "uses" in s}
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert {"actions/checkout", "actions/setup-node", "actions/upload-pages-artifact"} <= set(uses)
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    runs = [s["run"] for s in build["steps"] if "run" in s]
    assert runs.index("make test") < runs.index("make book")
    needs = deploy["needs"]
    assert "build" in ([needs] if isinstance(needs, str) else needs)
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert "refs/heads/main" in deploy["if"] and "pull_request" in deploy["if"]
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
