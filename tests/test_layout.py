"""The package's shape (README "Layout"), checked from the source.

Imports point one way:
    main -> experiments -> jobs -> api, evals -> training -> models, flow,
         data -> optim, sharding, checkpoint
Every import counts, also one inside a function: a lazy import still ties
the two modules together.
"""
import ast
import glob
import os
import subprocess
import sys

from testing_utils import ROOT

PKG = os.path.join(ROOT, 'vftok')


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _imports():
  """module -> set of vftok modules it imports (package imports resolved to
  the submodule when `from package import submodule`)."""
  paths = glob.glob(os.path.join(PKG, '**', '*.py'), recursive=True)
  modules = {_module_name(p): p for p in paths}
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name.startswith('vftok'))
      elif isinstance(node, ast.ImportFrom) and node.module and (
          node.module.startswith('vftok')):
        for a in node.names:
          sub = f'{node.module}.{a.name}'
          deps.add(sub if sub in modules else node.module)
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


GRAPH = _imports()


def _layer(module):
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def test_no_import_cycles():
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = 'active'
    for d in sorted(GRAPH[m]):
      if state.get(d) == 'active':
        cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
      elif d not in state:
        visit(d, stack + [d])
    state[m] = 'done'

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [m])
  assert not cycles, cycles


def _violations(src_layers, banned):
  return sorted((m, d) for m, deps in GRAPH.items() for d in deps
                if _layer(m) in src_layers and _layer(d) in banned)


def test_layers_point_down():
  assert not _violations({'models'}, {'evals', 'jobs', 'api', 'training',
                                      'main', 'experiments'})
  assert not _violations({'data'}, {'models', 'evals', 'jobs', 'api',
                                    'training', 'main', 'experiments'})
  assert not _violations({'optim', 'sharding', 'checkpoint', 'flow'},
                         {'models', 'evals', 'jobs', 'api', 'training',
                          'main', 'experiments'})
  assert not _violations({'training'}, {'evals', 'jobs', 'api', 'main',
                                        'experiments'})
  assert not _violations({'api', 'evals'}, {'jobs', 'main', 'experiments'})
  assert not _violations({'jobs'}, {'experiments', 'main'})
  assert not _violations({'experiments'}, {'main'})


def test_no_job_imports_another_job():
  bad = sorted((m, d) for m, deps in GRAPH.items() for d in deps
               if _layer(m) == 'jobs' and _layer(d) == 'jobs'
               and d != 'vftok.jobs')
  assert not bad


def test_package_root_holds_at_most_eight_modules():
  """Besides errors.py: the user's-mistake exceptions every layer raises,
  the bottom of the stack (it imports nothing from vftok)."""
  root = sorted(os.path.basename(p) for p in glob.glob(os.path.join(PKG,
                                                                    '*.py')))
  assert len(set(root) - {'errors.py'}) <= 8, root
  assert not GRAPH['vftok.errors']


def test_loading_any_config_imports_no_jax():
  """Config files are read by tools that must not pay for (or need) JAX."""
  code = (
      'import importlib.util, glob, os, sys\n'
      'for p in sorted(glob.glob("configs/*.py")):\n'
      '  spec = importlib.util.spec_from_file_location("c", p)\n'
      '  mod = importlib.util.module_from_spec(spec)\n'
      '  spec.loader.exec_module(mod)\n'
      '  mod.get_config(None)\n'
      '  bad = [m for m in ("jax", "flax", "torch", "tensorflow")'
      ' if m in sys.modules]\n'
      '  assert not bad, (p, bad)\n'
      'print("ok")\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-2000:]
