"""Every notebook in notebooks/ runs top to bottom (nbclient, a fresh Python
kernel, CPU) with its "parameters" cell set to SMOKE = True and paths in a
temp dir; the saved notebooks carry no outputs. The demo tokenizer trained by
train_demo_tokenizer.ipynb is the one the quick start and the AR notebook
load (each would train its own if given an empty workdir)."""
import glob
import os
import time

import pytest

from testing_utils import ROOT

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

pytestmark = pytest.mark.e2e
NOTEBOOKS = os.path.join(ROOT, 'notebooks')
TIMEOUT = 600  # per cell


def execute(name, tmp, **params):
  """Runs notebooks/<name> in `tmp` with the parameters appended to its
  parameters cell; -> (the executed notebook, seconds)."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  cell = next(c for c in nb.cells
              if 'parameters' in c.metadata.get('tags', ()))
  cell.source += '\n# test parameters\n' + '\n'.join(
      f'{k} = {v!r}' for k, v in dict(SMOKE=True, **params).items())
  client = nbclient.NotebookClient(
      nb, timeout=TIMEOUT, kernel_name='python3',
      resources={'metadata': {'path': str(tmp)}})
  t0 = time.time()
  client.execute()
  seconds = time.time() - t0
  print(f'{name}: {seconds:.1f}s')
  return nb, seconds


def text_output(nb):
  return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.outputs)


@pytest.fixture(scope='module', autouse=True)
def kernel_env():
  # The kernel (and the jobs it starts) import this checkout on one CPU device.
  saved = {k: os.environ.get(k) for k in ('PYTHONPATH', 'XLA_FLAGS')}
  os.environ['PYTHONPATH'] = os.pathsep.join(
      p for p in (ROOT, saved['PYTHONPATH']) if p)
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  yield
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def test_saved_notebooks_have_no_outputs():
  names = sorted(os.path.basename(p) for p in glob.glob(f'{NOTEBOOKS}/*.ipynb'))
  assert names == ['ar_generation.ipynb', 'quickstart.ipynb',
                   'train_demo_tokenizer.ipynb']
  for name in names:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert 'pip' in code[0].source  # the install cell comes first
    assert 'CPU, GPU or TPU' in nb.cells[0].source
    assert sum('parameters' in c.metadata.get('tags', ()) for c in code) == 1
    for c in code:
      assert not c.outputs and c.execution_count is None, (name, c.source[:60])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """train_demo_tokenizer.ipynb -> (its workdir, its data root)."""
  tmp = tmp_path_factory.mktemp('train_nb')
  work, data = str(tmp / 'vftok_demo'), str(tmp / 'demo_data')
  nb, _ = execute('train_demo_tokenizer.ipynb', tmp, WORKDIR=work,
                  DATA_ROOT=data)
  return work, data, nb


def test_train_demo_tokenizer(trained):
  work, _, nb = trained
  assert os.path.exists(os.path.join(work, 'recon_6.png'))
  assert 'TensorBoard: tensorboard --logdir' in text_output(nb)
  images = [o for c in nb.cells for o in c.get('outputs', ())
            if 'image/png' in o.get('data', {})]
  assert images  # the reconstruction grid, inline


def test_quickstart(trained, tmp_path):
  from PIL import Image
  import numpy as np
  work, data, nb = trained
  out = tmp_path / 'out'
  nb, _ = execute('quickstart.ipynb', tmp_path, WORKDIR=work, DATA_ROOT=data,
                  OUT=str(out))
  row = np.asarray(Image.open(out / 'quickstart_row.png'))
  # original | 1 | 2 | 4 tokens (the smoke tokenizer's K = 4), 32 px x4.
  assert row.shape == (128, 4 * 128, 3)
  assert 'original | 1 tok | 2 tok | 4 tok' in text_output(nb)
  assert '33 frames -> tokens (1, 9, 4) -> (1, 33, 32, 32, 3)' in text_output(nb)
  assert (out / 'long_video.gif').exists()


def test_ar_generation(trained, tmp_path):
  work, data, _ = trained
  ar = tmp_path / 'ar'
  execute('ar_generation.ipynb', tmp_path, TOKENIZER_WORKDIR=work,
          DATA_ROOT=data, AR_WORKDIR=str(ar))
  assert (ar / 'samples' / 'samples.png').exists()
  assert glob.glob(str(ar / 'samples' / 'samples_n4.*'))
