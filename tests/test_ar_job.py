"""The AR jobs end to end at tiny sizes (train_ar, sample_ar, eval_ar).

Covers: training on token records lowers the loss, and a run preempted at
step 4 and resumed reproduces the uninterrupted loss curve exactly (and
so does one whose latest checkpoint was truncated); a full disk stops
training with one error and the restart resumes; a corrupt token shard
is named, or skipped and counted; the
demo_tokens path tokenizes a (tiny) demo set with a tokenizer checkpoint,
trains, samples every class at two budgets with the KV cache and writes the
grid PNG + GIF / MP4; sample_ar does class -> video with the KV-cache
benchmark; eval_ar scores samples per budget and CFG scale (gFVD, class
score with the conditioning labels, deterministic given the seed); text
conditioning (captions encoded on the fly by a pluggable encoder) trains and
samples caption -> video.
"""
import json
import os
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vftok
from vftok import checkpoint
from vftok import defaults
from vftok import sharding
from vftok import training
from vftok.api import generator
from vftok.data import pipeline
from vftok.data import records
from vftok.jobs import eval_ar
from vftok.jobs import sample_ar
from vftok.jobs import train_ar
from vftok.models.pretrained import text_encoders

import testing_utils
from testing_utils import Recorder
from testing_utils import corrupt_middle
from testing_utils import fill_disk
from testing_utils import load_config
from testing_utils import tiny_tmpfs
from testing_utils import truncate_largest_file

pytestmark = pytest.mark.e2e  # whole jobs / scripts: see tests/conftest.py

T, K, LEVELS = 5, 4, (4, 4, 4)   # the tiny tokenizer: 64 codes
VOCAB = int(np.prod(LEVELS))
CAPTIONS = ('red ball', 'blue sky', 'green tree', 'a cat')


def losses(rec):
  return [rec.scalars[s]['loss'] for s in sorted(rec.scalars)
          if 'loss' in rec.scalars[s]]


def tiny_ar(config, text_dim=0):
  m = config.model
  m.depth, m.width, m.heads = 1, 32, 2
  m.vocab_size, m.num_frames, m.tokens_per_frame, m.seq_len = VOCAB, T, K, T * K
  m.num_classes = 0 if text_dim else 4
  m.text_dim = text_dim
  m.dropout = 0.1
  config.data.global_batch_size = 8   # the 8 simulated devices
  config.optim.lr = 1e-2
  config.optim.warmup_steps = 1
  t = config.train
  t.log_every, t.checkpoint_every, t.eval_every = 1, 4, 0
  e = config.eval
  e.budgets, e.samples_per_condition = (1, K), 1
  e.decode_steps, e.formats = 1, ('gif', 'mp4')
  return config


def write_synthetic_records(directory, n=32):
  """Class c's clips share one token grid (plus a little noise): learnable."""
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  base = rng.integers(0, VOCAB, (4, T, K))
  examples = []
  for i in range(n):
    c = i % 4
    tokens = base[c].copy()
    flip = rng.random((T, K)) < 0.1
    tokens[flip] = rng.integers(0, VOCAB, flip.sum())
    examples.append(dict(tokens=tokens.astype(np.uint16), label=c,
                         caption=CAPTIONS[c], source=f'synthetic:{i}'))
  path = os.path.join(directory, 'train-00000-of-00001.array_record')
  records.write_token_records(path, examples)
  return os.path.join(directory, 'train-*.array_record')


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
  return testing_utils.small_demo_set(tmp_path_factory.mktemp('demo_data'),
                                      repa_teacher='')


@pytest.fixture(scope='module')
def tokenizer_dir(demo_root, tmp_path_factory):
  """A tokenizer workdir (config.json + checkpoint) with initial params: the
  AR jobs only need its interface, and skipping training keeps this fast."""
  c = defaults.tokenizer_config()
  c.data.kind, c.data.root, c.data.resolution = 'demo', str(demo_root), 32
  c.data.demo_repa_teacher = ''
  c.data.global_batch_size = 8
  m = c.model
  m.latent_size, m.patch_size, m.tokens_per_frame, m.fsq_levels = (4, 4), (1, 1, 1), K, LEVELS
  m.enc_depth = m.dec_depth = 1
  m.enc_width = m.dec_width = 32
  m.head_dim, m.repa_dim, m.repa_source = 16, 8, 'random_stand_in'
  c.optim.mup_base_width = 0
  c.model.dtype = 'float32'
  out = tmp_path_factory.mktemp('tokenizer')
  with open(out / checkpoint.CONFIG_FILE, 'w') as f:
    f.write(c.to_json())
  # Random params from NumPy: compiling the tokenizer's init costs seconds.
  abstract = sharding.unbox(jax.eval_shape(
      training.tokenizer_task(c).init_fn, jax.random.key(0)))
  rng = np.random.default_rng(0)

  def leaf(path, x):
    if not jax.tree_util.keystr(path).startswith('.params'):
      return jnp.zeros(x.shape, x.dtype)  # step, optimizer moments
    base = 1.0 if getattr(path[-1], 'key', '') == 'scale' else 0.0  # norms
    return jnp.asarray(base + 0.02 * rng.standard_normal(x.shape), x.dtype)
  state = jax.tree_util.tree_map_with_path(leaf, abstract)
  ckpt = checkpoint.Checkpointer(str(out / training.CHECKPOINT_DIR),
                                 async_save=False)
  ckpt.maybe_save(1, state, force=True)
  ckpt.close()
  return str(out)


def test_train_lowers_loss_and_resume_reproduces_it(tmp_path, monkeypatch):
  c = tiny_ar(defaults.ar_config(1))
  c.data.train_pattern = write_synthetic_records(str(tmp_path / 'tokens'))
  c.train.total_steps = 8
  full = Recorder()
  train_ar.run(c, str(tmp_path / 'full'), writer=full)
  curve = losses(full)
  assert len(curve) == 8 and curve[0] > 3.5  # ~ln(64) at the start
  assert np.mean(curve[-2:]) < curve[0] - 0.5
  assert {'accuracy', 'lr', 'tokens_per_sec', 'grad_norm'} <= set(full.scalars[8])

  monkeypatch.setattr(checkpoint.PreemptionGuard, 'should_stop',
                      lambda self, step: step == 4)
  first = Recorder()
  train_ar.run(c, str(tmp_path / 'cut'), writer=first)
  assert sorted(first.scalars) == [1, 2, 3, 4]
  monkeypatch.undo()
  second = Recorder()
  train_ar.run(c, str(tmp_path / 'cut'), writer=second)
  assert min(second.scalars) == 5
  np.testing.assert_array_equal(losses(first) + losses(second), curve)

  # A truncated file in the latest step (8): moved aside, resumed from 4.
  truncate_largest_file(tmp_path / 'full' / 'checkpoints' / '8')
  third = Recorder()
  train_ar.run(c, str(tmp_path / 'full'), writer=third)
  assert min(third.scalars) == 5
  np.testing.assert_array_equal(losses(third), curve[4:])
  assert (tmp_path / 'full' / 'checkpoints' / 'damaged' / '8').is_dir()


def test_disk_full_stops_training_and_the_restart_resumes(tmp_path,
                                                          monkeypatch):
  """checkpoints/ on a 4 MB tmpfs that is full from step 5 on: the step-8
  save fails, training stops with one CheckpointError naming it and the
  intact step 4, before the next save is due; once there is room again the
  next start resumes from step 4."""
  c = tiny_ar(defaults.ar_config(1))
  c.data.train_pattern = write_synthetic_records(str(tmp_path / 'tokens'))
  c.train.total_steps = 12
  work = tmp_path / 'work'
  with tiny_tmpfs(work / 'checkpoints', size='4m') as ckpt_dir:
    save = checkpoint.Checkpointer.maybe_save

    def full_after_4(self, step, *args, **kwargs):
      if step > 4:  # step 4 written, then refilled each step (space that
        self.wait()  # Orbax frees in the background is taken at once)
        fill_disk(ckpt_dir / f'filler_{step}')
      return save(self, step, *args, **kwargs)
    monkeypatch.setattr(checkpoint.Checkpointer, 'maybe_save', full_after_4)
    first = Recorder()
    with pytest.raises(checkpoint.CheckpointError) as e:
      train_ar.run(c, str(work), writer=first)
    monkeypatch.undo()
    msg = str(e.value)
    assert '\n' not in msg and 'No space left on device' in msg, msg
    assert msg.startswith('saving checkpoint step 8 ')
    assert msg.endswith('(steps [4] are intact; a restart resumes from step 4)')
    assert 8 <= max(first.scalars) < 12
    for f in ckpt_dir.glob('filler_*'):
      f.unlink()
    assert checkpoint.Checkpointer(str(ckpt_dir)).all_steps() == [4]
    second = Recorder()
    train_ar.run(c, str(work), writer=second)
  assert min(second.scalars) == 5 and max(second.scalars) == 12


def test_corrupt_token_shard_is_named_or_skipped(tmp_path):
  """A damaged byte range in the token records: one error naming the file
  and record; with data.skip_bad_records training goes on and reports the
  count; above data.max_bad_record_fraction it stops."""
  c = tiny_ar(defaults.ar_config(1))
  c.data.train_pattern = write_synthetic_records(str(tmp_path / 'tokens'))
  (path,) = records.expand(c.data.train_pattern)
  (bad,) = corrupt_middle(path)
  c.train.total_steps, c.train.checkpoint_every = 4, 0  # one epoch
  with pytest.raises(records.BadRecordError,
                     match=f'{path}: record {bad} is bad: RuntimeError: '
                     'Corrupted Riegeli'):
    train_ar.run(c, str(tmp_path / 'strict'), writer=Recorder())
  c.data.skip_bad_records, c.data.max_bad_record_fraction = True, 0.05
  rec = Recorder()
  train_ar.run(c, str(tmp_path / 'skip'), writer=rec)
  assert len(losses(rec)) == 4 and rec.scalars[4]['data/bad_records'] == 1
  c.data.max_bad_record_fraction = 0.01  # 1 of 32 > 1 %
  with pytest.raises(records.BadRecordError, match='max_bad_record_fraction'):
    train_ar.run(c, str(tmp_path / 'stop'), writer=Recorder())


@pytest.fixture(scope='module')
def demo_ar(demo_root, tokenizer_dir, tmp_path_factory):
  """A class-conditioned AR workdir trained 2 steps on the tiny demo's tokens
  (tokenized by the train job itself) -> (workdir, its Recorder)."""
  del demo_root  # the tokenizer's data
  c = tiny_ar(load_config('ar_demo'))
  c.tokenizer.checkpoint = tokenizer_dir
  c.train.total_steps = c.train.eval_every = 2
  work = tmp_path_factory.mktemp('demo_ar') / 'ar'
  rec = Recorder()
  train_ar.run(c, str(work), writer=rec)
  return work, rec


def test_long_demo_clips_are_tokenized_per_chunk(tokenizer_dir, tmp_path):
  """data.clip_frames=21: the demo videos cut into 21-frame clips (two
  chunks), encoded with the tokenizer's codec and tokenized through
  tokenize_long into [6, K] records; training on them needs a
  frame-conditioned decoder (refused up front without one)."""
  c = tiny_ar(load_config('ar_demo', 'long'))
  c.model.num_frames, c.model.seq_len = 6, 6 * K
  c.tokenizer.checkpoint = tokenizer_dir
  c.data.clip_frames, c.data.tokens_per_frame = 21, K
  with pytest.raises(ValueError, match='no frame-conditioned decoder'):
    train_ar.check_inputs(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()
  manifest = train_ar.tokenize_demo(c, str(tmp_path / 'tokens'))
  assert manifest['tokens_shape'] == [6, K] and manifest['num_frames'] == 21
  base = os.path.dirname(generator.latent_data(
      c, vftok.Tokenizer.from_checkpoint(tokenizer_dir)).codec_path)
  latents = records.read_manifest(base + '-clips21')   # beside the 17-frame set
  assert latents['chunks']['latent_frames'] == [5, 2]
  assert latents['latent_shape'][0] == 7
  assert latents['counts']['train'] == manifest['counts']['train'] == 64


def test_demo_tokens_train_samples_and_sample_job(demo_ar, tmp_path):
  work, rec = demo_ar
  manifest = records.read_manifest(str(work / 'demo_tokens'))
  assert manifest['counts']['train'] == 64 and manifest['tokens_shape'] == [T, K]
  for name in ('samples_2.png', 'samples_2_n1.gif', 'samples_2_n4.mp4',
               'samples_2.npz'):
    assert (work / name).exists(), name
  assert rec.scalars[2]['sample/tokens_per_sec_n4'] > 0
  tokens = np.load(work / 'samples_2.npz')['n4']
  assert tokens.shape == (4, 1, T, K) and tokens.max() < VOCAB

  s = load_config('sample_ar')
  s.ar_workdir = str(work)
  # 2 x 2 rows at the trained budgets: the run's compiled sampler is reused.
  s.classes, s.budgets, s.samples = (0, 3), (1, K), 2
  s.decode_steps, s.benchmark, s.formats = 1, True, ('mp4',)
  out = tmp_path / 'sampled'
  report = sample_ar.run(s, str(out))
  for name in ('samples.png', 'samples_n1.mp4', f'samples_n{K}.mp4',
               'samples.json', 'samples.txt'):
    assert (out / name).exists(), name
  assert set(report['tokens_per_sec']) == {'kv_cache_first_call', 'kv_cache',
                                           'no_kv_cache'}
  assert json.loads((out / 'samples.json').read_text())['ar_step'] == 2

  # Image-to-video from held-out clips 1 and 0: their first latent frame's
  # tokens come back exactly in every sample of every class.
  s.benchmark, s.samples, s.prefix = False, 1, 'i2v'
  s.given.clips, s.given.frames = (1, 0), 1
  report = sample_ar.run(s, str(out))
  tok = vftok.Tokenizer.from_checkpoint(report['tokenizer_workdir'])
  data = generator.latent_data(checkpoint.load_workdir_config(str(work)), tok)
  _, ds = pipeline.eval_dataset(data, num_clips=2, batch_size=2)
  clips = np.asarray(tok.tokenize(ds[0]['latents'][[1, 0]]))
  sampled = np.load(out / 'i2v.npz')
  for n in (1, K):
    got = sampled[f'n{n}']                  # [classes, clips, T, n]
    assert got.shape == (2, 2, T, n)
    np.testing.assert_array_equal(
        got[:, :, 0], np.broadcast_to(clips[:, 0, :n], (2, 2, n)))
  assert report['given']['clips'] == [1, 0]
  assert (out / 'i2v.png').exists()
  # The AR's own lengths: every sample between 1 and K tokens per frame,
  # -1 past its budget, decoded to <prefix>_auto.mp4.
  a = s.copy_and_resolve_references()
  a.given.clips, a.given.frames, a.prefix = (), 0, 'auto'
  a.auto_budget.entropy_threshold = 1e9      # every level "confident": min
  a.auto_budget.min_budget = 2
  report = sample_ar.run(a, str(out))
  got = np.load(out / 'auto.npz')
  assert got['auto'].shape == (2, 1, T, K)
  assert (got['auto_budgets'] == 2).all()
  assert (got['auto'][..., :2] >= 0).all() and (got['auto'][..., 2:] == -1).all()
  assert report['auto_budget']['mean_tokens_per_frame'] == 2.0
  assert (out / 'auto_auto.mp4').exists()
  bad = s.copy_and_resolve_references()
  bad.given.tokens = 1            # with frames: ambiguous
  with pytest.raises(ValueError, match='exactly one of given.frames'):
    sample_ar.run(bad, str(tmp_path / 'bad'))
  bad.given.frames = 0            # tokens=1 keeps all of budget 1
  with pytest.raises(ValueError, match='keeps every token at budget 1'):
    sample_ar.run(bad, str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()


class _WordTokenizer:
  """HF-tokenizer-like: words -> ids by hash, padded to max_length."""

  def __call__(self, texts, padding, truncation, max_length, return_tensors,
               return_token_type_ids):
    del padding, truncation, return_tensors, return_token_type_ids
    ids = np.zeros((len(texts), max_length), np.int32)
    mask = np.zeros((len(texts), max_length), np.int32)
    for i, text in enumerate(texts):
      words = text.split()[:max_length]
      ids[i, :len(words)] = [1 + zlib.crc32(w.encode()) % 99 for w in words]
      mask[i, :len(words)] = 1
    return {'input_ids': ids, 'attention_mask': mask}


class _BagOfWords(nn.Module):
  @nn.compact
  def __call__(self, ids, mask):
    return nn.Embed(100, 8)(ids) * mask[..., None]


def _tiny_text_encoder(path, max_length, dtype):
  del path, dtype
  module = _BagOfWords()
  params = module.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                       jnp.ones((1, 2), bool))
  return text_encoders.TextEncoder('tiny_words', module, params,
                                   _WordTokenizer(), 8, max_length)


def test_text_conditioning_trains_and_samples(tokenizer_dir, tmp_path):
  text_encoders.register('tiny_words', _tiny_text_encoder)
  c = tiny_ar(load_config('ar_demo_t2v'), text_dim=8)
  c.data.kind = 'records'
  c.data.train_pattern = write_synthetic_records(str(tmp_path / 'tokens'))
  c.text.encoder, c.text.max_length = 'tiny_words', 4
  c.tokenizer.checkpoint = tokenizer_dir
  c.eval.captions = CAPTIONS[:2]
  c.train.total_steps = 3
  rec = Recorder()
  train_ar.run(c, str(tmp_path / 'ar'), writer=rec)
  assert np.isfinite(losses(rec)).all()

  # The same run from text embeddings precomputed into the token records
  # (config.text.source='records'): the same loss curve, up to float16.
  enc = text_encoders.get('tiny_words', max_length=4)
  exs = records.read_records(c.data.train_pattern)
  for ex in exs:
    emb, mask = enc.encode([ex['caption']], 4)
    ex['text_emb'] = np.asarray(emb[0]).astype(np.float16)
    ex['text_mask'] = np.asarray(mask[0]).astype(np.uint8)
  os.makedirs(tmp_path / 'tokens_emb')
  records.write_token_records(
      str(tmp_path / 'tokens_emb' / 'train-00000-of-00001.array_record'), exs)
  c2 = c.copy_and_resolve_references()
  c2.data.train_pattern = str(tmp_path / 'tokens_emb' / 'train-*.array_record')
  c2.text.source = 'records'
  rec2 = Recorder()
  train_ar.run(c2, str(tmp_path / 'ar_emb'), writer=rec2)
  np.testing.assert_allclose(losses(rec2), losses(rec), rtol=5e-3)
  c2.data.train_pattern = c.data.train_pattern   # records without text_emb
  with pytest.raises(ValueError, match='hold no text_emb'):
    train_ar.run(c2, str(tmp_path / 'ar_bad'), writer=Recorder())

  s = load_config('sample_ar')
  s.ar_workdir = str(tmp_path / 'ar')
  s.captions, s.budgets, s.samples = ('a cat', 'unseen words'), (2,), 1
  s.decode_steps, s.formats, s.cfg_scale = 1, ('gif',), 3.0
  report = sample_ar.run(s, str(tmp_path / 'sampled'))
  assert (tmp_path / 'sampled' / 'samples_n2.gif').exists()
  assert [c['caption'] for c in report['conditions']] == list(s.captions)
  with pytest.raises(ValueError, match='not class-'):
    s.classes = (0,)
    sample_ar.run(s, str(tmp_path / 'bad'))


CONSTANT_CLASSIFIER = """
import numpy as np

class Constant:
  class_names = ('a', 'b', 'c', 'd')

  def __call__(self, clips):
    assert clips.dtype == np.uint8 and clips.ndim == 5
    return np.tile(np.float32([[0.1, 0.2, 0.3, 0.4]]), (len(clips), 1))

def make(path):
  return Constant()
"""


def test_eval_ar_scores_every_budget_and_cfg_scale(demo_ar, tmp_path,
                                                   monkeypatch):
  work, _ = demo_ar
  (tmp_path / 'plugin').mkdir()
  (tmp_path / 'plugin' / 'constant_classifier.py').write_text(
      CONSTANT_CLASSIFIER)
  monkeypatch.syspath_prepend(str(tmp_path / 'plugin'))
  e = load_config('eval_ar')
  e.ar_workdir = str(work)
  e.classes, e.samples_per_condition = (1, 3), 3   # 6 samples: 1 padded batch
  e.budgets, e.cfg_scales = (1, K), (1.0, 2.0)
  e.decode.steps = (1, 2)   # Fig. 12's axis: each budget at both
  e.fvd.layer, e.fvd.resolution = 'pool', 32      # I3D small enough for CI
  e.classifier.factory = 'constant_classifier:make'
  e.classifier.path = 'unused'
  out = tmp_path / 'eval'
  result = eval_ar.run(e, str(out))
  for name in ('eval_ar.csv', 'eval_ar.md', 'eval_ar.json', 'eval_ar.png',
               'samples_cfg1.png'):
    assert (out / name).exists(), name
  rows = result['rows']
  assert [(r['cfg_scale'], r['budget'], r['decode_steps']) for r in rows] == [
      (g, n, s) for g in (1.0, 2.0) for n in (1, K) for s in (1, 2)]
  assert [r['tokens_per_video'] for r in rows] == [T, T, T * K, T * K] * 2
  # Inference FLOPs (Fig. 12): the AR part grows with the tokens and doubles
  # with CFG; the decoder part is per step (all K slots, mask-token padded).
  by = {(r['cfg_scale'], r['budget'], r['decode_steps']): r for r in rows}
  for g in (1.0, 2.0):
    assert by[g, K, 1]['gflops_ar'] > by[g, 1, 1]['gflops_ar']
    for n in (1, K):
      assert by[g, n, 2]['gflops_decode'] == pytest.approx(
          2 * by[g, n, 1]['gflops_decode'])
      assert by[g, n, 1]['gflops_decode'] == by[g, 1, 1]['gflops_decode']
  assert by[2.0, K, 1]['gflops_ar'] == pytest.approx(
      2 * by[1.0, K, 1]['gflops_ar'])
  for r in rows:
    assert r['gflops_per_video'] == pytest.approx(r['gflops_ar'] +
                                                  r['gflops_decode'])
  for r in rows:
    assert np.isfinite(r['gfvd']) and r['gfvd'] >= 0
    # p(conditioning class): samples of classes 1 and 3 -> (0.2 + 0.4) / 2.
    assert r['class_score'] == pytest.approx(0.3)
    assert r['sec_per_video_ar'] > 0 and r['sec_per_video_decode'] > 0
  # Different samples at different budgets (the tokens are decoded).
  assert len({r['gfvd'] for r in rows}) > 1
  # Real clips: 4 held-out clips, one per class 0..3 -> mean p = 0.25.
  assert result['real']['class_score'] == pytest.approx(0.25)
  assert result['info']['num_real_clips'] == 4
  with open(out / 'eval_ar.csv') as f:
    assert len(f.read().strip().splitlines()) == 1 + len(rows)

  # One setting of the sweep on its own: identical numbers (paired keys),
  # with the AR-chosen lengths beside it (every level "confident" past 2).
  e.budgets, e.cfg_scales, e.decode.steps = (K,), (2.0,), (2,)
  e.auto_budget.entropy_threshold, e.auto_budget.min_budget = 1e9, 2
  out = eval_ar.run(e, str(tmp_path / 'again'))
  again = out['rows'][0]
  assert again['gfvd'] == by[2.0, K, 2]['gfvd']
  (auto,) = out['auto_rows']
  assert auto['budget'] == 2.0 and auto['tokens_per_video'] == 2 * T
  assert auto['budgets_chosen'][2] == 6 and np.isfinite(   # 2 x 3 samples
      auto['gfvd'])
  assert 'AR-chosen budgets' in (tmp_path / 'again' / 'eval_ar.md').read_text()
  e.auto_budget.entropy_threshold = 0.0

  bad = [(dict(budgets=(K + 1,)), r'outside \[1, '),
         (dict(cfg_scales=()), 'cfg_scales'),
         (dict(classes=(4,)), 'outside'),
         (dict(captions=('a cat',)), 'not text-'),
         (dict(batch_size=3), 'multiple of the 8 devices')]
  for fields, match in bad:
    c = e.copy_and_resolve_references()
    c.update(fields)
    with pytest.raises(ValueError, match=match):
      eval_ar.run(c, str(tmp_path / 'bad'))
  c = e.copy_and_resolve_references()
  c.decode.steps = (0,)
  with pytest.raises(ValueError, match='step counts must be >= 1'):
    eval_ar.run(c, str(tmp_path / 'bad'))
  c = e.copy_and_resolve_references()
  c.ar_workdir = str(demo_ar[0].parent.parent)
  with pytest.raises(ValueError, match='is not a train_ar workdir'):
    eval_ar.run(c, str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()   # nothing half-written
