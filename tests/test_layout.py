"""The package's layout: imports run one way (core <- data, io <- run <- tools), no cycles, and only the tools and
their command names (`python -m minidept.demo`, ...) import a tool."""

from __future__ import annotations

import ast
from pathlib import Path

import minidept

PACKAGE = Path(minidept.__file__).parent
COMMANDS = {"train", "evaluate", "predict", "demo", "export", "push", "plot", "reproduce", "pretrain"}   # the shims


def modules() -> dict[str, Path]:
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def imports(name: str, file: Path, known: dict) -> set[str]:
    """The minidept modules that `file` imports (relative imports resolved; `from pkg import module` counted)."""
    package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {candidate for candidate in [target] + [f"{target}.{alias.name}" for alias in node.names]
                      if candidate in known}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
    return found - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, file, known) for name, file in known.items()}


def test_no_import_cycles():
    edges = graph()
    related = lambda a, b: a.startswith(b + ".") or b.startswith(a + ".")  # noqa: E731  (a package and its modules)
    state, path, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for other in edges[module]:
            if related(module, other):
                continue
            if state.get(other) == "open":
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module)
    assert not cycles, cycles


def test_imports_run_one_way():
    """The core imports only the core; data knows no models or prompts; io and data never import the run or the
    tools; only the tools and the command names import a tool."""
    core = {"minidept.methods", "minidept.prompted", "minidept.loop", "minidept.models"}
    in_core = lambda module: any(module == c or module.startswith(c + ".") for c in core)  # noqa: E731
    for module, imported in graph().items():
        layer = module.split(".")[1] if "." in module else ""
        if in_core(module):
            assert all(in_core(other) for other in imported), (module, imported)
        if layer == "data":
            assert not any(o.startswith(("minidept.models", "minidept.prompted", "minidept.run", "minidept.tools",
                                         "minidept.io.adapters")) for o in imported), (module, imported)
        if layer in ("io", "data"):
            assert not any(o.startswith(("minidept.run", "minidept.tools")) for o in imported), (module, imported)
        if layer != "tools" and module.split(".")[-1] not in COMMANDS and module != "minidept.bench.__main__":
            assert not any(o.startswith("minidept.tools") for o in imported), (module, imported)


def test_the_command_names_are_a_few_lines_each():
    for name in COMMANDS & {file.stem for file in PACKAGE.glob("*.py")}:
        lines = (PACKAGE / f"{name}.py").read_text(encoding="utf-8").splitlines()
        assert len(lines) <= 15, name
