"""The training job end to end on the embedded demo data (tiny sizes).

Covers: the job writes checkpoints, metrics, the reconstruction picture and
the PSNR table; a run preempted at step 3 and resumed reproduces the loss
curve of an uninterrupted run exactly; Tokenizer.from_checkpoint loads it;
a truncated latest checkpoint resumes from the one before, with the same
curve.
"""
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

import vftok
import testing_utils
from vftok import checkpoint
from vftok import defaults
from vftok.jobs import train_tokenizer

from testing_utils import Recorder
from testing_utils import load_config
from testing_utils import truncate_largest_file

pytestmark = pytest.mark.e2e  # whole jobs / scripts: see tests/conftest.py


def e2e_config(data_root):
  c = load_config('demo')
  c.data.root = str(data_root)
  c.data.resolution = 32
  c.data.global_batch_size = 8  # divisible by the 8 simulated devices
  m = c.model
  m.latent_size, m.patch_size, m.tokens_per_frame = (4, 4), (1, 1, 1), 4
  m.enc_depth = m.dec_depth = 1
  m.enc_width = m.dec_width = 32
  m.head_dim = 16  # repa_dim stays the demo teacher's (I3D Mixed_3c, 480)
  c.optim.warmup_steps = 2
  c.train.total_steps = 6
  c.train.log_every = 1
  c.train.checkpoint_every = 3
  c.train.eval_every = 6
  c.eval.num_clips = 2
  c.eval.sample_steps = 2
  return c


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return testing_utils.small_demo_set(tmp_path_factory.mktemp('demo_data'))


def losses(rec):
  return [rec.scalars[s]['loss'] for s in sorted(rec.scalars)
          if 'loss' in rec.scalars[s]]


@pytest.fixture(scope='module')
def full_run(data_root, tmp_path_factory):
  """An uninterrupted 6-step run -> (workdir, its Recorder)."""
  out = tmp_path_factory.mktemp('full_run') / 'full'
  full = Recorder()
  train_tokenizer.run(e2e_config(data_root), str(out), writer=full)
  return out, full


def test_preempt_and_resume_reproduces_the_loss_curve(data_root, full_run,
                                                      tmp_path, monkeypatch):
  c = e2e_config(data_root)
  out, full = full_run
  assert len(losses(full)) == 6

  # Preempted at step 3 (as on SIGTERM): checkpoint, exit, rerun resumes.
  first = Recorder()
  monkeypatch.setattr(checkpoint.PreemptionGuard, 'should_stop',
                      lambda self, step: step == 3)
  train_tokenizer.run(c, str(tmp_path / 'cut'), writer=first)
  assert sorted(first.scalars) == [1, 2, 3]
  assert checkpoint.Checkpointer(str(tmp_path / 'cut' / 'checkpoints')
                                 ).latest_step() == 3
  monkeypatch.undo()
  second = Recorder()
  train_tokenizer.run(c, str(tmp_path / 'cut'), writer=second)
  assert min(second.scalars) == 4
  np.testing.assert_array_equal(losses(first) + losses(second), losses(full))

  # Outputs a researcher looks at.
  assert (out / 'recon_6.png').exists() and (out / 'psnr_6.md').exists()
  table = (out / 'psnr_6.md').read_text()
  for k in (1, 2, 4):
    assert f'| {k} |' in table
  for row in ('one-step mean', 'clip mean colour', '2x2 thumbnail',
              'codec only (ceiling)'):
    assert row in table
  eval_scalars = full.scalars[6]
  for name in ('k=4', 'mean_k=4', 'clip mean colour', 'codec'):
    assert np.isfinite(eval_scalars[f'eval/psnr_{name}']), name
  # Rows: original, codec, a sample and a one-step mean per budget (32 px
  # frames, 2 px padding).
  grid = np.asarray(Image.open(out / 'recon_6.png'))
  assert grid.shape[0] == (2 + 2 * 3) * (32 + 2) + 2, grid.shape

  # The checkpoint loads through the public API.
  tok = vftok.Tokenizer.from_checkpoint(str(out))
  assert tok.tokens_per_frame == 4 and tok.latent_shape == (5, 4, 4, 16)
  x = np.random.default_rng(0).normal(size=(1, 5, 4, 4, 16)).astype(np.float32)
  tokens = tok.tokenize(x)
  assert tokens.shape == (1, 5, 4)
  assert tok.detokenize(tokens[:, :, :2], steps=2).shape == (1, 5, 4, 4, 16)

  # Stage 2 from this run: encoder bit-identical, decoder trained further.
  s2 = defaults.decoder_finetune(e2e_config(data_root), init_from=str(out))
  s2.train.total_steps, s2.train.eval_every = 2, 2
  train_tokenizer.run(s2, str(tmp_path / 'stage2'), writer=Recorder())
  tok2 = vftok.Tokenizer.from_checkpoint(str(tmp_path / 'stage2'))
  enc1, enc2 = (jax.tree.leaves(t.params['params']['encoder']) for t in (tok, tok2))
  for a, b in zip(enc1, enc2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  dec1, dec2 = (jax.tree.leaves(t.params['params']['decoder']) for t in (tok, tok2))
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(dec1, dec2))
  np.testing.assert_array_equal(np.asarray(tok2.tokenize(x)), np.asarray(tokens))
  out2 = np.asarray(tok2.detokenize(tokens[:, :, :2], steps=2, first_frame=x[:, 0]))
  np.testing.assert_array_equal(out2[:, 0], x[:, 0])
  with pytest.raises(ValueError, match='init_from'):
    train_tokenizer.run(defaults.decoder_finetune(e2e_config(data_root)),
                        str(tmp_path / 'no_init'), writer=Recorder())


def distill_config(data_root, teacher=''):
  c = defaults.distill_decoder(e2e_config(data_root), init_from=str(teacher),
                               student_steps=(1, 2), steps=2)
  c.sample.steps = 4  # the teacher's sampler, short for the test
  c.train.total_steps, c.train.checkpoint_every, c.train.eval_every = 4, 2, 4
  return c


def test_distill_stage_resumes_exactly_and_decodes_in_few_steps(
    data_root, full_run, tmp_path, monkeypatch):
  """configs/demo.py:distill's stage at test size: trains from the stage-1
  run (the teacher), a run preempted at step 2 and resumed has the loss
  curve of an uninterrupted one, the student keeps the teacher's encoder,
  decodes in its steps and reaches its teacher's sampler; the evaluation
  sweep puts student and teacher side by side."""
  teacher_dir, _ = full_run
  c = distill_config(data_root, teacher_dir)
  full = Recorder()
  train_tokenizer.run(c, str(tmp_path / 'full'), writer=full)
  first = Recorder()
  monkeypatch.setattr(checkpoint.PreemptionGuard, 'should_stop',
                      lambda self, step: step == 2)
  train_tokenizer.run(distill_config(data_root, teacher_dir),
                      str(tmp_path / 'cut'), writer=first)
  monkeypatch.undo()
  assert sorted(first.scalars) == [1, 2]
  second = Recorder()
  train_tokenizer.run(distill_config(data_root, teacher_dir),
                      str(tmp_path / 'cut'), writer=second)
  assert min(second.scalars) == 3
  np.testing.assert_array_equal(losses(first) + losses(second), losses(full))
  assert {'loss_steps1', 'loss_steps2'} <= set(full.scalars[4])
  assert '1-step student' in (tmp_path / 'full' / 'psnr_4.md').read_text()

  student = vftok.Tokenizer.from_checkpoint(str(tmp_path / 'full'))
  teacher = vftok.Tokenizer.from_checkpoint(str(teacher_dir))
  for a, b in zip(jax.tree.leaves(student.params['params']['encoder']),
                  jax.tree.leaves(teacher.params['params']['encoder'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  x = np.random.default_rng(0).normal(size=(2, 5, 4, 4, 16)).astype(np.float32)
  tokens = student.tokenize(x)
  np.testing.assert_array_equal(tokens, teacher.tokenize(x))
  np.testing.assert_array_equal(student.detokenize(tokens, seed=1),
                                student.detokenize(tokens, steps=2, seed=1))
  np.testing.assert_array_equal(
      student.detokenize(tokens, sampler='teacher', seed=1),
      teacher.detokenize(tokens, seed=1, **{
          k: c.sample[k] for k in ('steps', 'guidance_scale', 'guidance')}))

  from vftok.jobs import eval_tokenizer  # pylint: disable=g-import-not-at-top
  e = load_config('eval_tokenizer')
  e.checkpoint, e.num_clips, e.budgets = str(tmp_path / 'full'), 2, (1, 4)
  e.fvd.layer, e.fvd.resolution = 'pool', 16
  result = eval_tokenizer.run(e, str(tmp_path / 'sweep'))
  got = [(r['sampler'], r['steps'], r['guidance'], r['budget'])
         for r in result['rows']]
  g = c.sample.guidance_scale
  assert got == [('student', 1, 1.0, 1), ('student', 1, 1.0, 4),
                 ('student', 2, 1.0, 1), ('student', 2, 1.0, 4),
                 ('teacher', 1, g, 1), ('teacher', 1, g, 4),
                 ('teacher', 2, g, 1), ('teacher', 2, g, 4),
                 ('teacher', 4, g, 1), ('teacher', 4, g, 4)]
  flops = {(r['sampler'], r['steps']): r['gflops_per_clip_detokenize']
           for r in result['rows']}
  # Two guided passes per teacher step, one per student step.
  assert flops[('teacher', 4)] == pytest.approx(8 * flops[('student', 1)])
  md = (tmp_path / 'sweep' / 'sweep.md').read_text()
  assert '- student, 2 Euler steps:' in md and 'fewer FLOPs' in md
  assert 'guidance 3.0 (APG: 2 decoder passes per step)' in md
  assert (tmp_path / 'sweep' / 'recon_student_g1_s2.png').exists()

  # No teacher named: one error before anything is written.
  with pytest.raises(Exception, match='needs its teacher'):
    train_tokenizer.run(distill_config(data_root), str(tmp_path / 'none'),
                        writer=Recorder())
  assert not (tmp_path / 'none').exists()


def test_damaged_latest_checkpoint_resumes_from_the_previous(
    data_root, full_run, tmp_path):
  """A truncated file in step 6: the run moves it aside, resumes from step 3
  and repeats the uninterrupted curve from there; from_checkpoint names the
  damaged step and offers the other."""
  out, full = full_run
  work = tmp_path / 'work'
  shutil.copytree(out, work)
  truncate_largest_file(work / 'checkpoints' / '6')
  again = Recorder()
  train_tokenizer.run(e2e_config(data_root), str(work), writer=again)
  assert min(again.scalars) == 4
  np.testing.assert_array_equal(losses(again), losses(full)[3:])
  assert (work / 'checkpoints' / 'damaged' / '6' / 'state').is_dir()
  assert checkpoint.Checkpointer(str(work / 'checkpoints')).all_steps() == [3, 6]

  truncate_largest_file(work / 'checkpoints' / '6')
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'step 6 .* does not restore: OUT_OF_RANGE.*other '
                     r'steps: \[3\] \(pass step=.*step=3'):
    vftok.Tokenizer.from_checkpoint(str(work))
  assert (work / 'checkpoints' / '6').is_dir()  # a reader moves nothing
  tok = vftok.Tokenizer.from_checkpoint(str(work), step=3)
  assert tok.tokens_per_frame == 4


def test_rerun_with_another_model_stops_and_keeps_the_run(data_root, full_run,
                                                          tmp_path):
  """The issue's case: a finished workdir re-run with model.dec_depth
  changed stops with one FATAL line naming the field, and leaves config.json
  and every checkpoint as they were; the original command still resumes, and
  a change that keeps the state (more steps, no evaluation) trains on."""
  from vftok import main  # pylint: disable=g-import-not-at-top
  out, full = full_run
  work = tmp_path / 'work'
  shutil.copytree(out, work)
  listing = lambda: sorted(str(p.relative_to(work)) for p in work.rglob('*'))
  before, config_json = listing(), (work / 'config.json').read_text()
  c = e2e_config(data_root)
  c.model.dec_depth = 2
  with pytest.raises(SystemExit) as e:
    main.run_job(train_tokenizer, c, str(work))
  assert str(e.value.code).startswith('FATAL the config differs from the run')
  assert 'model.dec_depth (1 -> 2)' in str(e.value.code)
  assert '\n' not in str(e.value.code)
  assert listing() == before
  assert (work / 'config.json').read_text() == config_json
  # The original command: already trained, nothing moved or rewritten.
  again = Recorder()
  train_tokenizer.run(e2e_config(data_root), str(work), writer=again)
  assert not again.scalars  # restored at step 6 of 6: nothing to train
  assert not (work / 'checkpoints' / 'damaged').exists()
  # More steps and no evaluation: the same state, resumed from step 6.
  c = e2e_config(data_root)
  c.train.total_steps, c.train.eval_every = 7, 0
  more = Recorder()
  train_tokenizer.run(c, str(work), writer=more)
  assert sorted(more.scalars) == [7]
  assert checkpoint.load_workdir_config(str(work)).train.total_steps == 7


def test_time_budget_sizes_a_fresh_run_and_a_resume_keeps_it(data_root,
                                                             full_run,
                                                             tmp_path, capsys):
  """train.time_budget_s: the step is timed before training and the run's
  length chosen from it (here the floor, min_steps: 0.01 s buys no step),
  printed and saved; the timing leaves the state and the data where they
  were (the loss curve equals the unbudgeted 6-step run's); a re-run, even
  under another budget, keeps the saved length."""
  def config(budget):
    c = e2e_config(data_root)
    c.train.total_steps, c.train.min_steps = 300, 6
    c.train.time_budget_s, c.train.eval_every = budget, 0
    return c
  work = tmp_path / 'budgeted'
  budgeted = Recorder()
  train_tokenizer.run(config(0.01), str(work), writer=budgeted)
  assert '0.01 s of training -> 6 steps' in capsys.readouterr().out
  assert checkpoint.load_workdir_config(str(work)).train.total_steps == 6
  assert losses(budgeted) == losses(full_run[1])
  again = Recorder()
  train_tokenizer.run(config(1e6), str(work), writer=again)
  assert not again.scalars  # at step 6 of its 6: nothing to train
  assert 'steps/s here' not in capsys.readouterr().out
  assert checkpoint.load_workdir_config(str(work)).train.total_steps == 6


def test_readme_tokenizer_example_runs_as_written(full_run, tmp_path):
  """The README's 'Using the tokenizer' block, on this run's workdir."""
  import os
  import re
  from PIL import Image
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, 'README.md')) as f:
    code = re.search(r'<!-- readme-example -->\n```python\n(.*?)```', f.read(),
                     re.S).group(1)
  out, _ = full_run
  png = tmp_path / 'tokens.png'
  code = code.replace("'/tmp/vftok_demo'", repr(str(out)))
  code = code.replace("'/tmp/vftok_tokens.png'", repr(str(png)))
  exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  img = np.asarray(Image.open(png))
  assert img.shape == (32, 3 * 32, 3)           # original | 1 | all tokens
  assert img[:, 32:].std() > 0


def test_exported_bundle_reconstructs_a_video_file(full_run, tmp_path):
  """export_tokenizer -> a bundle that tokenizes exactly as the checkpoint;
  the reconstruct job reads a real video through it (and through the workdir
  itself) and writes its table and picture; a second export refuses."""
  import json
  import os
  from vftok import errors
  from vftok import main
  from vftok.api import pretrained
  from vftok.data import demo
  from vftok.jobs import export_tokenizer
  from vftok.jobs import reconstruct
  out, _ = full_run
  bundle = tmp_path / 'bundle'
  export_tokenizer.run(load_config('export_tokenizer', checkpoint=str(out)),
                       str(bundle))
  assert sorted(os.listdir(bundle)) == sorted(
      ['codec.npz', 'config.json', 'latents.json', 'params.safetensors'])
  ref = vftok.Tokenizer.from_checkpoint(str(out))
  got = pretrained.load(str(bundle))
  lat = np.random.default_rng(0).normal(size=(2, *ref.latent_shape))
  np.testing.assert_array_equal(np.asarray(got.tokenizer.tokenize(lat)),
                                np.asarray(ref.tokenize(lat)))
  with pytest.raises(errors.InputError, match='already holds a bundle'):
    pretrained.export(str(out), str(bundle))

  video = os.path.join(demo.video_dir(), 'bikes.mp4')
  tables = {}
  for name, source in (('bundle', bundle), ('workdir', out)):
    c = load_config('reconstruct', video=video, tokenizer=str(source),
                    num_clips=2, sample_steps=2)
    main.run_job(reconstruct, c, str(tmp_path / name))
    with open(tmp_path / name / 'reconstruct.md') as f:
      text = f.read()
    for row in ('| 1 |', '| 2 |', '| 4 |', '| clip mean colour |',
                '| 2x2 thumbnail |', '| 4x4 thumbnail |',
                '| codec only (ceiling) |'):
      assert row in text, (row, text)
    with open(tmp_path / name / 'reconstruct.json') as f:
      tables[name] = json.load(f)
    img = np.asarray(Image.open(tmp_path / name / 'reconstruct.png'))
    assert img.shape[0] == 8 * (32 + 2) + 2  # originals, codec, 3 + 3 rows
  assert tables['bundle']['psnr'] == tables['workdir']['psnr']
  assert 0 < tables['bundle']['clip_starts_s'][1] < 10.5  # spread over 10.4 s
  with pytest.raises(SystemExit, match='no such file'):
    main.run_job(reconstruct, load_config(
        'reconstruct', video=str(tmp_path / 'none.mp4'),
        tokenizer=str(bundle)), str(tmp_path / 'bad'))
