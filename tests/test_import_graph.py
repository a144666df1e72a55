"""Imports in slt_jax run one way: no module needs another to be imported first, and no import cycle exists.

(tests/test_imports.py checks the other direction: the package imports without the optional extras.)

  python -m pytest -q tests/test_import_graph.py        # both checks; a cycle is printed as a -> b -> ... -> a
"""
import ast
import os
import pkgutil
import subprocess
import sys
import textwrap

import tiny_demo

PACKAGE = 'slt_jax'
ROOT = os.path.join(tiny_demo.REPO, PACKAGE)


def _modules() -> dict:
  """name -> source path of every module and package of slt_jax, found on disk (nothing is imported)."""
  found = {PACKAGE: os.path.join(ROOT, '__init__.py')}

  def walk(path, prefix):
    for info in pkgutil.iter_modules([path]):
      name = f'{prefix}.{info.name}'
      sub = os.path.join(path, info.name)
      if info.ispkg:
        found[name] = os.path.join(sub, '__init__.py')
        walk(sub, name)
      else:
        found[name] = sub + '.py'

  walk(ROOT, PACKAGE)
  return found


def _is_main_block(node) -> bool:
  """`if __name__ == '__main__':`"""
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__'
          and any(isinstance(c, ast.Constant) and c.value == '__main__' for c in node.test.comparators))


def _imported(name: str, path: str, modules: dict) -> set:
  """The slt_jax modules that module `name` (at `path`) imports anywhere in its source (function-local imports
  included): `import a.b` -> a.b; `from a import b` -> a.b when that is a module, else a."""
  tree = ast.parse(open(path, encoding='utf-8').read(), path)
  # What runs only as a script (`python -m slt_jax.show`) is another module (__main__), not an import edge.
  tree.body = [node for node in tree.body if not _is_main_block(node)]
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  targets = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: from .x import y
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
      for alias in node.names:
        sub = f'{base}.{alias.name}'
        targets.add(sub if sub in modules else base)
  return {t for t in targets if t in modules and t != name}


def import_graph(modules: dict) -> dict:
  return {name: _imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict):
  """One cycle of `graph` (name -> names) as a list [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_one():
  """The check below can fail: a cycle is found and named in order; a graph without one gives None."""
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set(), 'd': {'a', 'c'}}) is None


def test_graph_sees_function_local_and_relative_imports(tmp_path):
  pkg = tmp_path / 'p'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('def f():\n  from p import b\n')
  (pkg / 'b.py').write_text('from . import a\nimport p.c\n')
  (pkg / 'c.py').write_text('from p.a import f\nif __name__ == "__main__":\n  import p.b\n')
  modules = {'p': str(pkg / '__init__.py'), **{f'p.{m}': str(pkg / f'{m}.py') for m in 'abc'}}
  assert import_graph(modules) == {'p': set(), 'p.a': {'p.b'}, 'p.b': {'p.a', 'p.c'}, 'p.c': {'p.a'}}
  assert find_cycle(import_graph(modules)) == ['p.a', 'p.b', 'p.a']


def test_no_import_cycle():
  modules = _modules()
  assert 'slt_jax.models.hf' in modules and len(modules) > 30, sorted(modules)
  graph = import_graph(modules)
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle in slt_jax: ' + ' -> '.join(cycle)


def test_models_import_one_way():
  """models/: contract, layers, hf_io <- the families <- registry <- the rest (ARCHITECTURE.md)."""
  graph = import_graph(_modules())
  m = lambda *names: {f'slt_jax.models.{n}' for n in names}
  leaves = m('contract', 'layers', 'hf_io', 'token_rows')
  for leaf in m('contract', 'hf_io'):
    assert graph[leaf] == set(), (leaf, graph[leaf])
  for family in m('t5', 'bart', 'decoder'):
    assert graph[family] <= leaves, (family, graph[family] - leaves)
  assert graph['slt_jax.models.registry'] <= m('t5', 'bart', 'decoder')


_IMPORT_EACH = textwrap.dedent('''
    import importlib, sys, traceback
    failures = []
    for name in sys.argv[1:]:
      for loaded in [m for m in sys.modules if m == 'slt_jax' or m.startswith('slt_jax.')]:
        del sys.modules[loaded]  # each module first, as in a fresh interpreter (third-party ones stay loaded)
      try:
        importlib.import_module(name)
      except Exception:  # pylint: disable=broad-except
        failures.append(name + ':\\n' + traceback.format_exc(limit=-3))
    print('FAILED', len(failures))
    print('\\n'.join(failures))
''')


def test_each_module_imports_alone():
  """Every module imports as the first slt_jax module of an interpreter (none relies on another having been
  imported before it, as hf.py's families did through models/__init__). One interpreter, slt_jax purged from
  sys.modules before each import: the cost of importing jax / tensorflow is paid once."""
  names = sorted(n for n in _modules() if n != 'slt_jax.main')  # main defines absl flags: once per process
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  result = subprocess.run([sys.executable, '-c', _IMPORT_EACH, *names], cwd=tiny_demo.REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'FAILED 0' in result.stdout, result.stdout[-5000:]
  main = subprocess.run([sys.executable, '-c', 'import slt_jax.main'], cwd=tiny_demo.REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert main.returncode == 0, main.stderr[-3000:]
