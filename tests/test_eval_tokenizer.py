"""The tokenizer evaluation sweep and the class alignment score.

The sweep runs on a tiny checkpoint written in the trainer's layout (random
init; numbers are meaningless but every code path runs) over a synthetic
8-clip record set, with I3D on the 'pool' layer at 16 px so the real network
runs in seconds (the default stays the standard 224 px logits).
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

import testing_utils
from vftok import api
from vftok import checkpoint
from vftok import sharding
from vftok import training
from vftok.data import codecs
from vftok.data import records
from vftok.evals import budget_plot
from vftok.evals import class_score
from vftok.jobs import eval_budgets
from vftok.jobs import eval_tokenizer

from testing_utils import load_config

pytestmark = pytest.mark.e2e  # whole jobs / scripts: see tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLIPS = 4
GUIDANCE = (1.0, 2.0)


def _clips(rng, n, f=17, size=32):
  """Smooth moving colour patterns: varied enough for PCA and I3D."""
  t = np.arange(f)[:, None, None, None]
  y = np.arange(size)[None, :, None, None]
  x = np.arange(size)[None, None, :, None]
  out = []
  for _ in range(n):
    fx, fy, v = rng.uniform(0.1, 0.5, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = 127.5 + 100 * np.sin(fx * x + fy * y + v * t + phase)
    out.append(img)
  return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def _write_dataset(root):
  rng = np.random.default_rng(0)
  clips = _clips(rng, 16)
  codec = codecs.PatchPCACodec().fit(clips)
  codec.save(os.path.join(root, 'codec.npz'))
  lat = codec.encode(clips)

  def examples(idx, frames):
    for i in idx:
      ex = dict(latents=lat[i].astype(np.float16), label=int(i % 2),
                caption='', source=f'synthetic:{i}')
      if frames:
        ex['frames'] = clips[i]
      yield ex
  records.write_records(os.path.join(root, 'train-00000-of-00001.array_record'),
                        examples(range(8), False))
  records.write_records(os.path.join(root, 'eval-00000-of-00001.array_record'),
                        examples(range(8, 16), True))
  flat = lat.reshape(-1, 16)
  records.write_manifest(root, dict(codec='pca_offline', codec_path='codec.npz',
                                    latent_mean=flat.mean(0),
                                    latent_std=flat.std(0)))


def _perturb(params, key):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  """A train_tokenizer workdir (config.json + Orbax checkpoint at step 1)."""
  data = tmp_path_factory.mktemp('records')
  _write_dataset(str(data))
  c = testing_utils.tiny_tokenizer_config()
  c.data.train_pattern = str(data / 'train-*.array_record')
  c.data.eval_pattern = str(data / 'eval-*.array_record')
  m = c.model
  m.latent_channels, m.latent_frames, m.enc_depth, m.dec_depth = 16, 5, 1, 1
  workdir = tmp_path_factory.mktemp('ckpt')
  init_fn = training.tokenizer_task(c).init_fn
  state, _ = sharding.create_sharded_state(
      init_fn, jax.random.key(0), sharding.make_mesh(c.mesh))
  # Zero-initialised output layers would make every budget decode to the
  # bare noise; perturbed weights make the tokens matter.
  state = state.replace(params=jax.jit(_perturb)(state.params,
                                                 jax.random.key(1)))
  ck = checkpoint.Checkpointer(str(workdir / 'checkpoints'), async_save=False)
  ck.maybe_save(1, state, force=True)
  ck.close()
  (workdir / checkpoint.CONFIG_FILE).write_text(c.to_json(indent=2))
  return str(workdir)


def eval_config(ckpt_dir, **overrides):
  c = load_config('eval_tokenizer')
  c.checkpoint = ckpt_dir
  c.num_clips = NUM_CLIPS
  c.guidance_scales = GUIDANCE
  c.sample_steps = (2,)
  c.fvd.layer, c.fvd.resolution = 'pool', 16
  for k, v in overrides.items():
    c[k] = v
  return c


def _env(extra_path=''):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, extra_path,
                                                  env.get('PYTHONPATH')) if p)
  return env


FAKE_CLASSIFIER = '''
import numpy as np
class Bright:
  class_names = ['dark', 'bright']
  def __call__(self, clips):
    p = np.asarray(clips, np.float32).mean(axis=(1, 2, 3, 4)) / 255.0
    return np.stack([1 - p, p], axis=1)
def make(path):
  assert path == 'unused-path'
  return Bright()
def frame_stats(path):
  assert path.endswith('frame_stats_weights')
  def features(frames):   # per-frame channel means and stds: [N, 6]
    f = np.asarray(frames, np.float32).reshape(len(frames), -1, 3)
    return np.concatenate([f.mean(1), f.std(1)], axis=1)
  return features
'''


def random_lpips_alex(path):
  """An LPIPS (AlexNet) weights file with the package's state_dict keys and
  random values (tests/test_lpips.py checks the computation itself)."""
  rng = np.random.default_rng(0)
  convs = ((1, 0, 64, 3, 11), (2, 3, 192, 64, 5), (3, 6, 384, 192, 3),
           (4, 8, 256, 384, 3), (5, 10, 256, 256, 3))
  state = {}
  for l, (s, i, out, cin, k) in enumerate(convs):
    state[f'net.slice{s}.{i}.weight'] = rng.normal(
        0, (cin * k * k) ** -0.5, (out, cin, k, k)).astype(np.float32)
    state[f'net.slice{s}.{i}.bias'] = np.zeros(out, np.float32)
    state[f'lin{l}.model.1.weight'] = rng.uniform(
        0, 0.1, (1, out, 1, 1)).astype(np.float32)
  np.savez(path, **state)
  return str(path)


@pytest.fixture(scope='module')
def cli_sweep(ckpt, tmp_path_factory):
  """The documented command, with a plug-in classifier from another module
  and LPIPS from a local weights file."""
  out = tmp_path_factory.mktemp('sweep')
  plugin = tmp_path_factory.mktemp('plugin')
  (plugin / 'fake_classifier.py').write_text(FAKE_CLASSIFIER)
  weights = random_lpips_alex(plugin / 'lpips_alex.npz')
  (plugin / 'frame_stats_weights').write_text('')
  cmd = [sys.executable, '-m', 'vftok.main',
         '--config=configs/eval_tokenizer.py', f'--config.checkpoint={ckpt}',
         f'--workdir={out}', f'--config.num_clips={NUM_CLIPS}',
         '--config.guidance_scales=(1.0,2.0)', '--config.sample_steps=(2,)',
         '--config.fvd.layer=pool', '--config.fvd.resolution=16',
         '--config.classifier.factory=fake_classifier:make',
         '--config.classifier.path=unused-path',
         f'--config.lpips_weights={weights}',
         '--config.rfid.factory=fake_classifier:frame_stats',
         f'--config.rfid.path={plugin / "frame_stats_weights"}']
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(str(plugin)),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc.stdout


def test_sweep_command_writes_table_plot_grid(cli_sweep):
  out, stdout = cli_sweep
  with open(out / 'sweep.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(int(r['budget']), float(r['guidance']), int(r['steps']))
          for r in rows] == [(k, g, 2) for g in GUIDANCE for k in (1, 2, 4)]
  for r in rows:
    assert float(r['rfvd']) >= 0 and np.isfinite(float(r['rfvd']))
    assert 0 < float(r['psnr']) < 100 and -1 <= float(r['ssim']) <= 1
    # MAE, MSE (pixel levels, clip means): mean(mae)^2 <= mean(mse), and by
    # Jensen the mean PSNR is at least the PSNR of the mean MSE.
    mae, mse = float(r['mae']), float(r['mse'])
    assert 0 < mae and mae ** 2 <= mse * (1 + 1e-6)
    assert float(r['psnr']) >= 10 * np.log10(255 ** 2 / mse) - 1e-4
    assert 0 <= float(r['class_score']) <= 1
    assert 0 < float(r['lpips']) < 10
    assert float(r['rfid']) >= 0 and np.isfinite(float(r['rfid']))
    assert float(r['sec_per_clip_detokenize']) > 0
  md = (out / 'sweep.md').read_text()
  assert md in stdout  # printed with the table
  assert md.count('\n| ') == len(rows) + 2  # header, rows, codec ceiling
  assert '| rFVD | rFID | PSNR (dB) |' in md
  assert '| MSE | LPIPS | class score |' in md
  for line in ('| 4 | 2 | 2 |', 'codec only (ceiling)', '- tokenize:',
               '- detokenize, 2 Euler steps, guidance 1.0:',
               'guidance 2.0 (CFG', '- I3D features (I3D pool (1024-d)',
               f'{NUM_CLIPS} evaluation clips'):
    assert line in md, line
  result = json.loads((out / 'sweep.json').read_text())
  assert result['info']['devices'] == jax.device_count()
  plot = Image.open(out / 'sweep.png')
  assert plot.size == (1290, 400)  # 3 panels (rFVD, PSNR, SSIM) x 4.3 in
  for g in ('1', '2'):
    grid = np.asarray(Image.open(out / f'recon_g{g}_s2.png'))
    # original, codec, 3 budgets; 2 clips x 5 frames of 32 px (+2 px pad).
    assert grid.shape == (5 * 34 + 2, 64 + 10 * 34 + 2, 3)
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(out))


def test_sweep_same_seed_same_numbers(ckpt, cli_sweep, tmp_path):
  """In another process, with only one setting of the sweep: identical."""
  got = eval_tokenizer.run(eval_config(ckpt, budgets=(2,), guidance_scales=(
      2.0,)), str(tmp_path))
  cli = json.loads((cli_sweep[0] / 'sweep.json').read_text())
  want = [r for r in cli['rows'] if r['budget'] == 2 and r['guidance'] == 2.0]
  keys = ('rfvd', 'psnr', 'ssim', 'mae', 'mse')
  assert [got['rows'][0][k] for k in keys] == [want[0][k] for k in keys]
  assert got['codec']['rfvd'] == cli['codec']['rfvd']
  # The budgets do not all decode alike (the tokens are read).
  assert len({r['psnr'] for r in cli['rows']}) > 1


def test_tokenizer_on_a_mesh_matches_one_device_and_noise_is_per_clip(ckpt):
  """The evaluation jobs' front-end is the public Tokenizer with a mesh: the
  batch is split over the 8 devices and the results are those of one."""
  tok = api.Tokenizer.from_checkpoint(ckpt)
  mesh = sharding.make_mesh(tok.config.mesh)
  on_mesh = api.Tokenizer.from_checkpoint(ckpt, mesh=mesh)
  lat = np.random.default_rng(0).normal(size=(8,) + tok.latent_shape)
  tokens = on_mesh.tokenize(lat)
  split = lambda x: x.sharding.is_equivalent_to(
      sharding.batch_sharding(mesh), x.ndim)
  assert split(tokens)
  np.testing.assert_array_equal(np.asarray(tokens), tok.tokenize(lat))
  # CFG and APG (the eval config's APG parameters), per-clip noise.
  apg = {f'apg_{k}': v
         for k, v in load_config('eval_tokenizer').apg.to_dict().items()}
  noise = on_mesh.clip_noise(np.arange(8), seed=3)
  assert split(noise)
  for k, kind in ((2, 'cfg'), (4, 'apg')):
    args = dict(steps=2, guidance_scale=2.0, guidance=kind, **apg)
    got = on_mesh.detokenize(np.asarray(tokens)[:, :, :k], noise=noise, **args)
    assert split(got)
    want = tok.detokenize(np.asarray(tokens)[:, :, :k],
                          noise=np.asarray(noise), **args)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=kind)
  # Clip i's noise depends on (seed, i) only, not on the batch it is in
  # (clips decode independently, so neither do their reconstructions).
  same = tok.clip_noise(np.array([5]))
  np.testing.assert_array_equal(same[0], tok.clip_noise(np.array([3, 4, 5]))[2])
  assert not np.allclose(same, tok.clip_noise(np.array([5]), seed=1))


def test_tokens_at_psnr_reads_the_curve_between_its_points():
  pts = [(4.0, 12.0), (1.0, 10.0), (2.0, 11.0), (8.0, 11.5)]
  assert eval_budgets.tokens_at_psnr(pts, 10.5) == pytest.approx(1.5)
  assert eval_budgets.tokens_at_psnr(pts, 11.75) == pytest.approx(3.5)
  assert eval_budgets.tokens_at_psnr(pts, 9.0) == 1.0   # the first point
  assert np.isnan(eval_budgets.tokens_at_psnr(pts, 12.5))
  rows = [dict(mode='fixed', criterion='budget', budget=k, psnr=p)
          for k, p in ((1, 10.0), (2, 11.0), (4, 10.8), (8, 12.0))]
  rows.append(dict(mode='clip', criterion='fraction', budget=1.5, psnr=11.5))
  got = {s['fixed_budget']: s for s in eval_budgets.savings(rows, 'psnr')}
  # At fixed 2's 11 dB: between (1, 10) and (1.5, 11.5); at fixed 8's 12 dB:
  # the shared end (8, 12).
  assert got[2]['tokens'] == pytest.approx(1 + 0.5 / 1.5)
  assert got[8]['tokens'] == pytest.approx(8.0)
  assert got[8]['saving'] == pytest.approx(0.0)
  assert 4 not in got     # 2 tokens do better: 4 is no one's best budget


def test_eval_budgets_job_decodes_the_chosen_budgets(ckpt, tmp_path):
  """Fixed rows keep k tokens; a target that picks one token everywhere
  (fraction 0) decodes exactly like fixed 1 (same noise per clip); files
  are written."""
  c = load_config('eval_budgets')
  c.checkpoint, c.num_clips, c.sample_steps = ckpt, NUM_CLIPS, 2
  c.fractions, c.db_per_token = (0.0,), (0.0,)
  result = eval_budgets.run(c, str(tmp_path))
  rows = {r['policy']: r for r in result['rows']}
  for k in (1, 2, 4):
    assert rows[f'fixed {k}']['budget'] == k
    assert rows[f'fixed {k}']['frame_budgets'] == [k] * 5
  for r in result['rows']:      # where each policy's tokens went, per frame
    if r['mode'] != 'oracle':
      assert np.mean(r['frame_budgets']) == pytest.approx(r['budget'])
  for mode in ('clip', 'frame'):
    for by in ('', ' for the decode noise'):    # config.choose_noise
      ones = rows[f'per {mode}{by}, fraction=0']
      assert ones['budget'] == 1
      assert ones['psnr'] == rows['fixed 1']['psnr']
      assert ones['psnr_mean'] == rows['fixed 1']['psnr_mean']
      assert 1 <= rows[f'per {mode}{by}, db_per_token=0']['budget'] <= 4
  for measure in ('psnr', 'psnr_mean'):
    best = {k for k in (2, 4) if all(rows[f'fixed {j}'][measure] < rows[
        f'fixed {k}'][measure] for j in (1, 2, 4) if j < k)}
    assert {s['fixed_budget'] for s in result['savings']
            if s['measure'] == measure} == best
  # The oracle: at slope 0 each clip's best measured PSNR, so at least any
  # fixed budget's mean; its steepest slope in the sweep keeps fewer tokens.
  oracle = [r for r in result['rows'] if r['mode'] == 'oracle'
            and r['criterion'] == 'psnr_mean']
  assert oracle[0]['psnr_mean'] >= max(
      rows[f'fixed {k}']['psnr_mean'] for k in (1, 2, 4)) - 1e-6
  assert oracle[-1]['budget'] <= oracle[0]['budget']
  for name in ('budgets.md', 'budgets.csv', 'budgets.json', 'budgets.png'):
    assert (tmp_path / name).stat().st_size > 0
  c.modes = ('video',)
  with pytest.raises(ValueError, match="'video' is not 'clip' or 'frame'"):
    eval_budgets.run(c, str(tmp_path / 'bad'))
  c.modes, c.choose_noise = ('clip',), ('fresh',)
  with pytest.raises(ValueError, match="'fresh' is not 'own' or 'decode'"):
    eval_budgets.run(c, str(tmp_path / 'bad'))


def test_bad_checkpoint_paths_give_one_clear_error(ckpt, tmp_path):
  cases = [('', 'config.checkpoint is not set'),
           (str(tmp_path / 'missing'), 'does not exist'),
           (os.path.join(ckpt, 'checkpoints'),
            f"no config.json; did you mean the workdir '{ckpt}'"),
           (str(tmp_path), 'no config.json')]
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / checkpoint.CONFIG_FILE).write_text('{"job": "train_tokenizer"}')
  cases.append((str(empty), 'has no finished checkpoint'))
  ar = tmp_path / 'ar'
  ar.mkdir()
  (ar / checkpoint.CONFIG_FILE).write_text('{"job": "train_ar"}')
  cases.append((str(ar), "holds a 'train_ar' run"))
  for path, match in cases:
    with pytest.raises(ValueError, match=match):
      eval_tokenizer.run(eval_config(path), str(tmp_path / 'out'))
  assert not (empty / 'checkpoints').exists()  # nothing created there
  with pytest.raises(ValueError, match=r'available steps: \[1\]'):
    api.Tokenizer.from_checkpoint(ckpt, step=7)
  with pytest.raises(ValueError, match='multiple of the 8 devices'):
    eval_tokenizer.run(eval_config(ckpt, batch_size=6), str(tmp_path / 'o'))
  with pytest.raises(ValueError,
                     match=r'budgets=\(8,\): 8 tokens .* outside \[1, 4\]'):
    eval_tokenizer.run(eval_config(ckpt, budgets=(8,)), str(tmp_path / 'o'))
  c = eval_config(ckpt)
  c.rfid.factory = 'fake:features'
  with pytest.raises(ValueError, match='config.rfid.path is empty'):
    eval_tokenizer.run(c, str(tmp_path / 'o'))
  with pytest.raises(ValueError, match='lpips_weights=.*no such file'):
    eval_tokenizer.run(eval_config(ckpt, lpips_weights=str(tmp_path / 'x.pt')),
                       str(tmp_path / 'o'))
  assert not (tmp_path / 'o').exists()
  # Through the command line: one error line, not a cascade.
  proc = subprocess.run(
      [sys.executable, '-m', 'vftok.main', '--config=configs/eval_tokenizer.py',
       f'--config.checkpoint={tmp_path / "missing"}', f'--workdir={tmp_path}'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('FATAL config.checkpoint=') and \
      'does not exist' in last, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


# ------------------------------------------------------- kill -9 safety ---

def _sweep_result():
  """A small sweep result as run() builds it -> (result, settings, budgets,
  grid)."""
  budgets, settings = [1, 2], [('flow', 1.0, 2)]
  rows = [dict(sampler='flow', budget=k, guidance=1.0, steps=2, rfvd=10.0 / k,
               psnr=20.0 + k, ssim=0.5, mae=8.0, mse=100.0, lpips=0.1 * k,
               rfid=5.0 / k, class_score=float('nan'),
               sec_per_clip_detokenize=0.01, gflops_per_clip_detokenize=0.5)
          for k in budgets]
  info = dict(checkpoint='/ckpt/tok', step=6, num_clips=2, seed=0, devices=8,
              guidance='cfg', platform='cpu', clip_shape=[17, 32, 32, 3],
              features='I3D pool, 16 px', classifier='')
  timing = {'tokenize': 0.01, 'detokenize_g1.0_s2': 0.02,
            'i3d_features': 0.1, 'codec_decode': 0.01,
            'compile_seconds': 1.0, 'wall_seconds': 2.0}
  result = dict(info=info, rows=rows, timing=timing,
                codec=dict(rfvd=1.0, psnr=30.0, ssim=0.9, mae=2.0, mse=8.0,
                           lpips=0.05, rfid=1.0, class_score=float('nan')))
  px = np.zeros((2, 17, 32, 32, 3), np.uint8)
  return result, settings, budgets, {'rows': [px, px],
                                     ('flow', 1.0, 2): [px, px]}


class _NoWriter:
  def __getattr__(self, name):
    return lambda *args, **kwargs: None


@pytest.mark.parametrize('where', ['table', 'plot'])
def test_kill_9_while_writing_the_sweep_leaves_no_partial_output(
    tmp_path, monkeypatch, where):
  """The job is SIGKILLed in the middle of writing sweep.csv's rows, or
  with half of sweep.png written: every output is whole or absent, and the
  previous sweep's files are untouched."""
  result, settings, budgets, grid = _sweep_result()
  (tmp_path / 'sweep.csv').write_text('old table\n')
  (tmp_path / 'sweep.png').write_bytes(b'old plot')
  if where == 'table':
    real, rows = csv.DictWriter.writerow, []

    def writerow(self, row):
      rows.append(row)
      if len(rows) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
      return real(self, row)
    monkeypatch.setattr(csv.DictWriter, 'writerow', writerow)
  else:
    def plot(path, *args, **kwargs):
      with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n half a plot')
        f.flush()
      os.kill(os.getpid(), signal.SIGKILL)
    monkeypatch.setattr(budget_plot, 'plot_budget_curves', plot)
  pid = os.fork()  # the child only writes files, then dies by SIGKILL
  if pid == 0:
    try:
      eval_tokenizer._write(str(tmp_path), result, settings, budgets, grid,
                            1, _NoWriter())
    finally:
      os._exit(1)  # pylint: disable=protected-access
  deadline = time.time() + 120
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      break
    if time.time() > deadline:
      os.kill(pid, signal.SIGKILL)
      pytest.fail('the writing child hung')
    time.sleep(0.05)
  assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

  assert (tmp_path / 'sweep.png').read_bytes() == b'old plot'
  assert not list(tmp_path.glob('recon_*.png'))
  if where == 'table':
    assert (tmp_path / 'sweep.csv').read_text() == 'old table\n'
    assert not (tmp_path / 'sweep.md').exists()
    assert not (tmp_path / 'sweep.json').exists()
  else:
    with open(tmp_path / 'sweep.csv') as f:
      assert [int(r['budget']) for r in csv.DictReader(f)] == budgets
    assert (tmp_path / 'sweep.md').read_text() == eval_tokenizer.markdown(result)
    assert json.loads((tmp_path / 'sweep.json').read_text())['info']['step'] == 6


# ------------------------------------------------------------ class score ---

def _blobs(rng, n_per_class, classes=3, dim=1024):
  centres = rng.normal(size=(classes, dim)) * 0.5
  x = np.concatenate([c + rng.normal(size=(n_per_class, dim)) for c in centres])
  y = np.repeat(np.arange(classes), n_per_class).astype(np.int32)
  return x * 3 + 10, y  # offset / scale: standardisation must handle them


def test_linear_classifier_learns_separable_features(tmp_path):
  rng = np.random.default_rng(0)
  x, y = _blobs(rng, 40)
  x_test, y_test = _blobs(np.random.default_rng(0), 40)  # same centres
  x_test = x_test + rng.normal(size=x_test.shape)        # new noise
  head = class_score.train_linear(x, y, 3, steps=200)
  probs = head.probabilities(x_test)
  assert probs.shape == (120, 3)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  assert class_score.accuracy(probs, y_test) >= 0.95
  score = class_score.class_score(probs, y_test)
  assert score == pytest.approx(np.mean(probs[np.arange(120), y_test]))
  assert score > 0.8
  # Deterministic, and saved / loaded with its class names and I3D setup.
  again = class_score.train_linear(x, y, 3, steps=200)
  np.testing.assert_array_equal(again.weight, head.weight)
  clf = class_score.I3DClassifier(head, ['a', 'b', 'c'], 'pool', 32, 16)
  path = clf.save(str(tmp_path / 'classifier.npz'))
  loaded = class_score.make_classifier(class_score.DEFAULT_FACTORY, path)
  assert loaded.class_names == ['a', 'b', 'c']
  assert (loaded.layer, loaded.resolution, loaded.num_frames) == ('pool', 32,
                                                                   16)
  np.testing.assert_allclose(loaded.head.probabilities(x_test), probs,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='does not exist'):
    class_score.load_classifier(str(tmp_path / 'nope.npz'))


def test_class_score_is_mean_probability_of_given_class():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
  labels = np.array([0, 1, 2])
  assert class_score.class_score(probs, labels) == pytest.approx(
      (0.7 + 0.1 + 0.4) / 3)
  np.testing.assert_allclose(class_score.true_class_probs(probs, labels),
                             [0.7, 0.1, 0.4])
  fixed = lambda clips: np.tile([[0.25, 0.75]], (len(clips), 1))
  clips = np.zeros((4, 16, 8, 8, 3), np.uint8)
  assert class_score.score_clips(fixed, clips, [1, 1, 0, 1]) == pytest.approx(
      (0.75 * 3 + 0.25) / 4)
  with pytest.raises(ValueError, match=r'class ids in \[0, 3\)'):
    class_score.class_score(probs, np.array([0, 1, -1]))
  for bad in ('nodots', 'vftok.evals.class_score:missing', 'no_such_mod:f'):
    with pytest.raises(ValueError, match='classifier factory'):
      class_score.load_factory(bad)
  assert class_score.load_factory('vftok.evals.class_score.load_classifier') \
      is class_score.load_classifier


def test_train_classifier_job_on_records(ckpt, tmp_path):
  from vftok.jobs import train_classifier  # pylint: disable=g-import-not-at-top
  c = load_config('train_classifier')
  with open(os.path.join(ckpt, checkpoint.CONFIG_FILE)) as f:
    data = json.load(f)['data']
  c.data.kind = 'records'
  c.data.train_pattern, c.data.eval_pattern = (data['train_pattern'],
                                               data['eval_pattern'])
  c.max_clips_per_class = 4
  c.features.resolution = 16
  c.train.steps = 50
  results = train_classifier.run(c, str(tmp_path))
  assert results['train (codec decodes)/accuracy'] >= 0.75
  for k, v in results.items():
    assert 0 <= v <= 1, k
  clf = class_score.I3DClassifier.load(str(tmp_path / 'classifier.npz'))
  assert clf.class_names == ['class_0', 'class_1']
  probs = clf(np.zeros((2, 17, 32, 32, 3), np.uint8))
  assert probs.shape == (2, 2)
  assert 'held-out, real frames' in (tmp_path / 'classifier.md').read_text()
