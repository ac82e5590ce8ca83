"""The import layering of docs/ARCHITECTURE.md, read from the sources (AST: nothing is imported).

Why: a generated package imports `ssmc.runtime` and must never load the compiler (spec, IR, backends,
sympy's printers, networkx, jinja2); the IR must not know its backends, nor the backends the compile
pipeline. One stray import breaks that silently (everything still works, it only gets slow or
heavy), so every import statement of every module is checked, including imports inside functions
(they run sooner or later). A deliberate lazy import that breaks a rule is listed in
LAZY_EXCEPTIONS with its reason. `tests/test_cli.py` checks the same thing from the other side: it
imports a generated package in a fresh process and looks at sys.modules.

Module names are the installed ones: pyproject's package-dir maps `ir/` to `ssmc.ir` and
`backends/` to `ssmc.backends`, so `from ..spec import SSM` in `ir/build.py` is `ssmc.spec`.
`from ssmc import SSM` counts as `ssmc.spec` (the package's lazy attributes, read from its
`_SPEC_NAMES` and `_SUBMODULES`). Not seen: modules loaded by `importlib.import_module` with a
computed name, and attribute access on an imported `ssmc` (`ssmc.spec.SSM` after `import ssmc`).
"""
from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("sympy", "networkx", "jinja2")    # the compiler's libraries: never in the runtime
COMPILER_USERS = ("ssmc.compiler", "ssmc.cli", "ssmc.cli_bench", "ssmc.cli_tune", "ssmc.ops", "ssmc.nn")

# (importer, imported): why this import inside a function is allowed although it breaks a rule.
LAZY_EXCEPTIONS = {
    ("ssmc", "ssmc.compiler"): "ssmc.compile(spec) loads the compiler on its first call; `import ssmc` "
                               "itself loads only the error types",
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str         # an ssmc module, or a top-level third-party package
    line: int
    lazy: bool          # inside a function: runs when called, not when the module is imported

    def __str__(self):
        return f"{self.importer}:{self.line} imports {self.target}{' (inside a function)' if self.lazy else ''}"


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# ---- reading the sources ---------------------------------------------------------------------------

def installed_modules() -> dict:
    """{installed module name: (source text, is a package)} of every .py file pyproject installs."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = config["package-dir"]
    modules = {}
    for package in config["packages"]:
        owner = max((p for p in folders if _within(package, p)), key=len)
        folder = ROOT / folders[owner] / Path(*package.split(".")[len(owner.split(".")):])
        for path in sorted(folder.glob("*.py")):
            is_package = path.name == "__init__.py"
            name = package if is_package else f"{package}.{path.stem}"
            modules[name] = (path.read_text(), is_package)
    return modules


def _root_attributes(modules: dict) -> dict:
    """What `from ssmc import X` loads: ssmc/__init__'s lazy `__getattr__` tables, and compile()."""
    tree = ast.parse(modules["ssmc"][0])
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("_SPEC_NAMES", "_SUBMODULES"):
                tables[node.targets[0].id] = ast.literal_eval(node.value)
    attributes = {name: "ssmc.spec" for name in tables.get("_SPEC_NAMES", ())}
    attributes.update({name: f"ssmc.{name}" for name in tables.get("_SUBMODULES", ())})
    attributes["compile"] = "ssmc.compiler"
    return attributes


def imports_of(name: str, source: str, is_package: bool, modules: dict, root_attributes: dict) -> list:
    """Every import statement of module `name`, resolved to installed names."""
    found = []

    def target_of(base: str, alias: str) -> str:
        if f"{base}.{alias}" in modules:           # `from . import formula`: the submodule
            return f"{base}.{alias}"
        if base == "ssmc" and alias in root_attributes:
            return root_attributes[alias]
        return base

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(name, alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    if child.level - 1 >= len(package):
                        raise AssertionError(f"{name}:{child.lineno}: relative import beyond the top package")
                    kept = package[:len(package) - (child.level - 1)]
                    base = ".".join(kept + ([child.module] if child.module else []))
                else:
                    base = child.module
                found.extend(Import(name, target_of(base, alias.name), child.lineno, lazy) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def all_imports(modules: dict) -> list:
    attributes = _root_attributes(modules)
    return [imp for name, (source, is_package) in modules.items()
            for imp in imports_of(name, source, is_package, modules, attributes)]


# ---- the rules -------------------------------------------------------------------------------------

def _allowed_ssmc(importer: str):
    """The ssmc modules `importer` may import, as a predicate (None: anything)."""
    if importer == "ssmc.errors":
        return lambda t: False
    if importer == "ssmc.formula":
        return lambda t: t == "ssmc.errors"
    if importer == "ssmc.spec":
        return lambda t: t in ("ssmc.errors", "ssmc.formula")
    if _within(importer, "ssmc.runtime"):
        return lambda t: _within(t, "ssmc.runtime", "ssmc.errors")
    if _within(importer, "ssmc.ir"):
        return lambda t: _within(t, "ssmc.ir", "ssmc.spec", "ssmc.formula", "ssmc.errors")
    if _within(importer, "ssmc.backends"):
        # ssmc.templates: the folder of the jinja2 files (package data, no code)
        return lambda t: _within(t, "ssmc.backends", "ssmc.ir", "ssmc.spec", "ssmc.formula", "ssmc.errors",
                                 "ssmc.templates")
    if importer == "ssmc":
        return lambda t: t == "ssmc.errors"      # `import ssmc` loads only the error types
    return None


def violations(imports: list, modules: dict) -> list:
    """The imports that break the layering, as readable lines (LAZY_EXCEPTIONS excepted)."""
    found = []
    for imp in imports:
        ssmc_target = _within(imp.target, "ssmc")
        if ssmc_target and imp.target not in modules and imp.target != "ssmc":
            found.append(f"{imp}: no such installed module (the test resolves imports wrongly?)")
            continue
        if imp.lazy and (imp.importer, imp.target) in LAZY_EXCEPTIONS:
            continue
        allowed = _allowed_ssmc(imp.importer)
        if ssmc_target and imp.target != "ssmc" and allowed is not None and not allowed(imp.target):
            found.append(f"{imp}: outside its layer")
        if _within(imp.target, "ssmc.compiler") and not _within(imp.importer, *COMPILER_USERS):
            found.append(f"{imp}: only {', '.join(COMPILER_USERS)} may load the compile pipeline")
        if _within(imp.importer, "ssmc.runtime") and imp.target.split(".")[0] in HEAVY:
            found.append(f"{imp}: the runtime (what generated packages import) never loads {', '.join(HEAVY)}")
    return found


# ---- the tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def modules():
    return installed_modules()


def test_every_installed_module_is_read(modules):
    """The discovery follows pyproject: if it found nothing (or missed a folder), the rules below
    would pass vacuously."""
    for name in ("ssmc", "ssmc.spec", "ssmc.errors", "ssmc.formula", "ssmc.compiler", "ssmc.runtime",
                 "ssmc.runtime.calls", "ssmc.nn.s4d", "ssmc.ir.pass_manager", "ssmc.ir.passes.schedule",
                 "ssmc.backends.package", "ssmc.templates"):
        assert name in modules, name
    on_disk = {p for folder in ("ssmc", "ir", "backends", "templates") for p in (ROOT / folder).rglob("*.py")}
    assert len(modules) == len(on_disk)


def test_imports_respect_the_layering(modules):
    found = violations(all_imports(modules), modules)
    assert not found, "import layering broken (docs/ARCHITECTURE.md):\n" + "\n".join(found)


def test_lazy_exceptions_are_still_needed(modules):
    """An exception whose import is gone would silently allow it back later."""
    lazy = {(imp.importer, imp.target) for imp in all_imports(modules) if imp.lazy}
    assert set(LAZY_EXCEPTIONS) <= lazy, set(LAZY_EXCEPTIONS) - lazy


PLANTED = {
    # module: (planted line, expected words of the violation)
    "ssmc.runtime.fft": ("from ..spec import SSM", "ssmc.runtime.fft:1 imports ssmc.spec: outside its layer"),
    "ssmc.runtime.calls": ("def f():\n    import sympy", "imports sympy (inside a function): the runtime"),
    "ssmc.ir.build": ("from ..backends.render import render", "imports ssmc.backends.render: outside its layer"),
    "ssmc.ir.passes.fuse": ("from ...compiler import lower", "imports ssmc.compiler: outside its layer"),
    "ssmc.backends.c": ("def f():\n    from .. import compiler", "imports ssmc.compiler (inside a function)"),
    "ssmc.backends.torch": ("from ssmc import cli", "imports ssmc.cli: outside its layer"),
    "ssmc.spec": ("from .ir import ops", "ssmc.spec:1 imports ssmc.ir.ops: outside its layer"),
    "ssmc.formula": ("from ssmc import SSM", "ssmc.formula:1 imports ssmc.spec: outside its layer"),
    "ssmc.presets": ("from .compiler import compile_package", "only ssmc.compiler, ssmc.cli"),
    "ssmc": ("from .spec import SSM", "ssmc:1 imports ssmc.spec: outside its layer"),
}


@pytest.mark.parametrize("module", sorted(PLANTED))
def test_a_planted_violation_is_caught(modules, module):
    """The checker fails on one bad import added at the top of a real module (in memory)."""
    line, expected = PLANTED[module]
    source, is_package = modules[module]
    planted = dict(modules)
    planted[module] = (line + "\n" + source, is_package)
    found = violations(all_imports(planted), planted)
    assert any(expected in v for v in found), found
    assert all(v.startswith(module + ":") for v in found), found
