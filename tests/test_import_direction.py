"""One direction of imports: `shared` knows nothing of `workers` or `bench`; `workers` never loads `bench`
(the `fleetwatch bench` command's own lazy import aside: it checks the extra first); `bench` uses only
public names of `workers`, so the services can change their internals without breaking the benchmark.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Import:
    file: str
    line: int
    module: str
    names: tuple[str, ...]  # what a `from module import ...` takes; empty for `import module`
    function: str | None  # the innermost function the statement is in; None at module level

    def of(self, package: str) -> bool:
        return self.module == package or self.module.startswith(f"{package}.")


def imports_in(package: str) -> list[Import]:
    found: list[Import] = []
    for path in sorted((REPOSITORY / package).rglob("*.py")):
        file = str(path.relative_to(REPOSITORY))

        def visit(node: ast.AST, function: str | None, file: str = file) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import):
                    found.extend(Import(file, child.lineno, alias.name, (), function) for alias in child.names)
                elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                    names = tuple(alias.name for alias in child.names)
                    found.append(Import(file, child.lineno, child.module, names, function))
                inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
                visit(child, inner)

        visit(ast.parse(path.read_text(), file), None)
    return found


def test_shared_imports_neither_workers_nor_bench() -> None:
    assert [i for i in imports_in("shared") if i.of("workers") or i.of("bench")] == []


def test_workers_never_import_bench_but_the_bench_command_loads_it_lazily() -> None:
    into_bench = [i for i in imports_in("workers") if i.of("bench")]
    assert [(i.file, i.function) for i in into_bench] == [("workers/cli.py", "bench")]


def test_bench_uses_no_private_name_of_workers() -> None:
    into_workers = [i for i in imports_in("bench") if i.of("workers")]
    # A plain `import workers.x` would let `x._name` through unseen: only named public imports pass.
    offending = [i for i in into_workers if not i.names or any(name.startswith("_") for name in i.names)]
    assert offending == []
