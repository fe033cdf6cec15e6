"""The package floors of ARCHITECTURE.md hold: a package imports only packages below it, so
the import graph between packages has no cycle (read from every import statement with `ast`,
function-local ones included)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first. A package may import its own modules and any package earlier in this list.
FLOORS = (
    "xling_jax.kernels",
    "xling_jax.model",
    "xling_jax.runtime",
    "xling_jax.checkpoints",
    "xling_jax.data",
    "sae",
    "xling_jax.evaluation",
    "xling_jax.analysis",
    "lora",
    "xling_jax.study",
    "xling_jax",  # the facade: model_setup, nnx_model and the notebook API
    "configs",
    "bin",
)
OURS = ("xling_jax", "sae", "lora", "bin", "configs")


def package_of(module: str) -> str:
  """'xling_jax.model.layout' -> 'xling_jax.model'; 'xling_jax.model_setup' -> 'xling_jax';
  'sae.train.loop' -> 'sae'."""
  parts = module.split(".")
  if parts[0] == "xling_jax" and len(parts) > 1 and f"xling_jax.{parts[1]}" in FLOORS:
    return f"xling_jax.{parts[1]}"
  return parts[0]


def module_name(path: Path) -> str:
  rel = path.relative_to(REPO).with_suffix("")
  parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
  return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from xling_jax import model_setup` imports a module below the named package.
      found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
  return {m for m in found if m.split(".")[0] in OURS}


def package_edges() -> dict[tuple[str, str], str]:
  """{(importer package, imported package): one module that makes the edge}."""
  edges = {}
  for top in OURS:
    for path in sorted((REPO / top).rglob("*.py")):
      source = package_of(module_name(path))
      for target in map(package_of, imported_modules(path)):
        if target != source:
          edges.setdefault((source, target), module_name(path))
  return edges


def test_every_package_has_a_floor():
  packages = {package_of(module_name(p)) for top in OURS for p in (REPO / top).rglob("*.py")}
  assert packages <= set(FLOORS), sorted(packages - set(FLOORS))


def test_packages_import_only_packages_below_them():
  upward = [f"{module} ({source}) imports {target}"
            for (source, target), module in package_edges().items()
            if FLOORS.index(target) > FLOORS.index(source)]
  assert not upward, "\n".join(upward)


def test_the_package_graph_has_no_cycle():
  graph: dict[str, set[str]] = {}
  for source, target in package_edges():
    graph.setdefault(source, set()).add(target)
  state: dict[str, str] = {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      assert state.get(nxt) != "open", " -> ".join(path + [node, nxt])
      if nxt not in state:
        visit(nxt, path + [node])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [])
