"""Data layer: record schema, causal PCA codec, Grain pipeline, demo set."""
import os

from array_record.python import array_record_module
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vftok import defaults
from vftok import errors
from vftok.data import codecs
from vftok.models import latent_codecs
from vftok.data import demo
from vftok.data import pipeline
from vftok.data import records
from vftok.data import tokens as token_records
from vftok.models.pretrained import features

from testing_utils import corrupt_middle


def example(t=3, h=2, w=2, c=16, seed=0, label=7, frames=False,
            dtype=np.float16):
  rng = np.random.default_rng(seed)
  ex = dict(latents=rng.normal(size=(t, h, w, c)).astype(dtype), label=label,
            caption='a clip', source=f'vid:{seed}')
  if frames:
    f = 4 * (t - 1) + 1
    ex['frames'] = rng.integers(0, 256, (f, 8 * h, 8 * w, 3), dtype=np.uint8)
  return ex


def psnr(a, b):
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return 10 * np.log10(255.0 ** 2 / mse)


# ---- records ----------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.float16, np.float32])
def test_record_round_trip(dtype):
  ex = example(frames=True, dtype=dtype)
  ex['repa_features'] = np.arange(3 * 2 * 2 * 5, dtype=np.float32).reshape(
      3, 2, 2, 5)
  out = records.deserialize(records.serialize(ex))
  assert set(out) == set(ex)
  for k in ('latents', 'frames', 'repa_features'):
    assert out[k].dtype == ex[k].dtype and out[k].shape == ex[k].shape
    np.testing.assert_array_equal(out[k], ex[k])
  assert (out['label'], out['caption'], out['source']) == (7, 'a clip', 'vid:0')
  with pytest.raises(ValueError, match='unknown record fields'):
    records.serialize({**ex, 'pickle_me': object()})
  with pytest.raises(ValueError, match='not a vftok latent record'):
    records.deserialize(b'garbage')


def test_write_records_is_atomic(tmp_path):
  path = str(tmp_path / 'x.array_record')

  def crashing():
    yield example(seed=0)
    yield example(seed=1)
    raise RuntimeError('encoder died')

  with pytest.raises(RuntimeError, match='encoder died'):
    records.write_records(path, crashing())
  assert not os.listdir(tmp_path)  # neither the file nor a temp file
  bad = example(seed=2)
  bad['latents'][0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    records.write_records(path, [example(), bad])
  assert not os.listdir(tmp_path)
  assert records.write_records(path, [example(seed=i) for i in range(3)]) == 3
  assert os.listdir(tmp_path) == ['x.array_record']
  got = records.read_records(str(tmp_path / '*.array_record'))
  np.testing.assert_array_equal(got[2]['latents'], example(seed=2)['latents'])


@pytest.mark.parametrize('change,match', [
    (lambda ex: ex['latents'].__setitem__((1, 0, 0, 3), np.inf), 'NaN or Inf'),
    (lambda ex: ex.update(latents=ex['latents'][..., :8]), '8 channels'),
    (lambda ex: ex.update(latents=ex['latents'][0]), r'\[T, h, w, C\]'),
    (lambda ex: ex.update(frames=ex['frames'][:5]), r'\(F-1\)/4\+1'),
    (lambda ex: ex.update(frames=ex['frames'][:8]), '4n\\+1'),
    (lambda ex: ex.pop('caption'), 'missing'),
])
def test_validate_example_errors(change, match):
  ex = example(frames=True)
  records.validate_example(ex)
  change(ex)
  with pytest.raises(ValueError, match=match):
    records.validate_example(ex)


# ---- codec ------------------------------------------------------------------

def test_codec_contract_errors():
  with pytest.raises(ValueError, match=r'4n\+1'):
    codecs.check_clip_shape(16, 64, 64)
  with pytest.raises(ValueError, match='multiples of 8'):
    codecs.check_clip_shape(17, 60, 64)
  codec = codecs.PatchPCACodec()
  with pytest.raises(ValueError, match=r'4n\+1'):
    codec.fit(np.zeros((1, 16, 64, 64, 3), np.uint8))
  # Without torch + the VidTok code: an ImportError naming what to install;
  # with them but no checkpoint: a ValueError naming where to get it.
  with pytest.raises((ImportError, ValueError), match='VidTok'):
    latent_codecs.get_codec('vidtok')


@pytest.fixture(scope='module')
def bikes():
  """8 clips of 9 real frames at 64x64 (random crops of bikes.mp4)."""
  frames, _ = demo.decode_video(
      os.path.join(demo.video_dir(), 'bikes.mp4'), 128)
  rng = np.random.default_rng(0)
  specs = demo._specs(rng, 1, frames[:120], 0, 120, 8, 9)
  videos = {1: frames}
  return np.stack([demo._clip(videos, s, 9, 64) for s in specs])


def test_pca_codec_on_real_frames(bikes, tmp_path):
  codec = codecs.PatchPCACodec().fit(bikes)
  z = codec.encode(bikes[:1])
  assert z.shape == (1, 3, 8, 8, 16) and z.dtype == np.float32
  all_z = codec.encode(bikes).reshape(-1, 16)
  # One scale per patch type (not whitened): mean channel variance ~1 and
  # channels ordered by energy, leading one first.
  np.testing.assert_allclose(np.mean(all_z.var(0)), 1.0, atol=0.1)
  assert all_z[:, 0].var() > 3 * all_z[:, -1].var()
  np.testing.assert_allclose(all_z.mean(0), 0.0, atol=0.05)
  recon = codec.decode(codec.encode(bikes))
  assert recon.shape == bikes.shape and recon.min() >= 0 and recon.max() <= 255
  assert psnr(recon, bikes) > 20
  path = codec.save(str(tmp_path / 'codec.npz'))
  assert os.listdir(tmp_path) == ['codec.npz']
  np.testing.assert_array_equal(
      latent_codecs.get_codec('pca_offline', path).encode(bikes), codec.encode(bikes))
  # Deterministic: a refit on the same data gives the same latents.
  np.testing.assert_array_equal(
      codecs.PatchPCACodec().fit(bikes).encode(bikes), codec.encode(bikes))


def test_pca_codec_is_causal(bikes):
  codec = codecs.PatchPCACodec().fit(bikes)
  x = bikes[:1].copy()
  y = x.copy()
  y[:, 5:9] = 255 - y[:, 5:9]  # pixel frames 5..8 = latent frame 2
  zx, zy = codec.encode(x), codec.encode(y)
  np.testing.assert_array_equal(zx[:, :2], zy[:, :2])
  assert not np.allclose(zx[:, 2], zy[:, 2])


# ---- Grain pipeline ---------------------------------------------------------

N = 40


@pytest.fixture(scope='module')
def record_dir(tmp_path_factory):
  """N records (label = index) in 2 shards + a manifest with latent stats."""
  d = tmp_path_factory.mktemp('records')
  exs = [example(seed=i, label=i, dtype=np.float32) for i in range(N)]
  records.write_records(str(d / 'train-0.array_record'), exs[:25])
  records.write_records(str(d / 'train-1.array_record'), exs[25:])
  records.write_manifest(str(d), dict(latent_mean=np.full(16, 0.5),
                                      latent_std=np.full(16, 2.0)))
  return d


def data_config(record_dir, seed=0, batch=4):
  c = defaults.tokenizer_config().data
  c.kind, c.train_pattern = 'records', str(record_dir / 'train-*.array_record')
  c.global_batch_size, c.shuffle_seed = batch, seed
  c.normalize = 'global'  # from the manifest's statistics (tested below)
  return c


def labels(it, n):
  return [int(x) for _ in range(n) for x in next(it)['label']]


def test_iterator_batches(record_dir):
  it = pipeline.make_train_iterator(data_config(record_dir))
  b = next(it)
  assert b['latents'].shape == (4, 3, 2, 2, 16)
  assert b['latents'].dtype == np.float32
  assert b['label'].shape == (4,) and b['label'].dtype == np.int32
  raw = example(seed=int(b['label'][0]), dtype=np.float32)['latents']
  np.testing.assert_allclose(b['latents'][0], (raw - 0.5) / 2.0, rtol=1e-6)
  # Every record once per epoch, in a shuffled order that depends on the seed.
  epoch0 = [int(x) for x in b['label']] + labels(it, N // 4 - 1)
  assert sorted(epoch0) == list(range(N)) and epoch0 != list(range(N))
  other = labels(pipeline.make_train_iterator(data_config(record_dir, seed=1)),
                 N // 4)
  assert sorted(other) == list(range(N)) and other != epoch0
  assert labels(it, N // 4) != epoch0  # next epoch: reshuffled


def test_iterator_state_resumes_exactly(record_dir, tmp_path):
  cfg = data_config(record_dir)
  it = pipeline.make_train_iterator(cfg)
  labels(it, 13)  # past one epoch
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  fresh = pipeline.make_train_iterator(cfg)
  fresh.set_state(state)
  for w in want:
    got = next(fresh)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])
  # The same through Orbax, as the train checkpoint stores it.
  it = pipeline.make_train_iterator(cfg)
  labels(it, 5)
  with ocp.CheckpointManager(str(tmp_path), item_names=('data',)) as mgr:
    mgr.save(5, args=ocp.args.Composite(
        data=pipeline.checkpoint_args_save(it)))
    mgr.wait_until_finished()
    want = labels(it, 4)
    fresh = pipeline.make_train_iterator(cfg)
    mgr.restore(5, args=ocp.args.Composite(
        data=pipeline.checkpoint_args_restore(fresh)))
  assert labels(fresh, 4) == want


def test_process_slices_are_disjoint_and_complete(record_dir):
  cfg = data_config(record_dir)
  one = labels(pipeline.make_train_iterator(cfg), N // 4)
  parts = [labels(pipeline.make_train_iterator(
      cfg, process_index=p, process_count=2), N // 4) for p in range(2)]
  assert all(len(p) == N // 2 for p in parts)  # batch 4 / 2 processes
  assert not set(parts[0]) & set(parts[1])
  assert set(parts[0]) | set(parts[1]) == set(one) == set(range(N))
  with pytest.raises(ValueError, match='divisible'):
    pipeline.make_train_iterator(cfg, process_count=3)


def test_resolve_and_global_batch(record_dir):
  cfg = data_config(record_dir)
  cfg.train_pattern = str(record_dir / 'nothing-*.array_record')
  with pytest.raises(errors.InputError,
                     match='matches no latent record files; make them with: '
                     r'python -m vftok.main --config=configs/encode_videos\.py'):
    pipeline.resolve_patterns(cfg)
  cfg = data_config(record_dir, batch=8)
  data = pipeline.resolve_patterns(cfg)
  np.testing.assert_allclose(data.latent_std, 2.0)
  batch = next(pipeline.make_train_iterator(cfg, data))
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data'))
  g = pipeline.global_batch(batch, sharding)
  assert g['latents'].shape == (8, 3, 2, 2, 16) and g['label'].shape == (8,)
  np.testing.assert_array_equal(np.asarray(g['label']), batch['label'])


# ---- demo set ---------------------------------------------------------------

SMALL = dict(num_frames=9, resolution=32, max_clips_per_video=8,
             eval_clips_per_video=2, clips_per_shard=16,
             teacher_factory=features.demo_teacher)


def test_demo_build_failure_leaves_nothing(tmp_path, monkeypatch):
  def boom(*a, **k):
    raise RuntimeError('disk full')
  monkeypatch.setattr(records, 'write_manifest', boom)
  with pytest.raises(RuntimeError, match='disk full'):
    demo.ensure_demo_dataset(str(tmp_path / 'demo'), **SMALL)
  assert not os.listdir(tmp_path)


def test_demo_dataset_builds_and_yields_batches(tmp_path):
  root = str(tmp_path / 'demo')
  paths = demo.ensure_demo_dataset(root, **SMALL)
  m = paths.manifest
  assert m['counts'] == {'train': 32, 'eval': 8} and m['codec'] == 'pca_offline'
  assert m['latent_shape'] == [3, 4, 4, 16] and len(m['latent_std']) == 16
  assert len(records.expand(paths.train_pattern)) == 2
  assert sorted(os.listdir(tmp_path)) == ['demo']  # no temp dir left
  assert demo.ensure_demo_dataset(root, **SMALL).manifest == m  # cached
  with pytest.raises(ValueError, match='built with'):
    demo.ensure_demo_dataset(root, **{**SMALL, 'resolution': 64})

  # Eval clips come from a time range disjoint from every training clip.
  split = {s['name']: s['train_frames'][1] for s in m['sources']}
  train = records.read_records(paths.train_pattern)
  evals = records.read_records(paths.eval_pattern)
  for ex in train:
    name, start = ex['source'].rsplit(':', 1)
    assert int(start) + 9 <= split[name] and 'frames' not in ex
  for ex in evals:
    name, start = ex['source'].rsplit(':', 1)
    assert int(start) >= split[name] and ex['frames'].shape == (9, 32, 32, 3)
  assert {ex['label'] for ex in train} == {0, 1, 2, 3}

  cfg = defaults.tokenizer_config().data
  cfg.kind, cfg.root, cfg.num_frames, cfg.resolution = 'demo', root, 9, 32
  cfg.global_batch_size = 4
  data = pipeline.resolve_patterns(cfg)
  b = next(pipeline.make_train_iterator(cfg, data))
  assert b['latents'].shape == (4, 3, 4, 4, 16)
  ev = pipeline.make_eval_batches(cfg, data, num_clips=8, batch_size=8)
  assert ev[0]['frames'].shape == (8, 9, 32, 32, 3)
  assert ev[0]['frames'].dtype == np.uint8
  # Normalise -> denormalise -> decode reaches the held-out pixels.
  codec = latent_codecs.load_codec(data)
  recon = codec.decode(pipeline.make_denormalizer(data)(ev[0]['latents']))
  assert psnr(recon, ev[0]['frames']) > 18


def test_demo_default_root(monkeypatch, tmp_path):
  monkeypatch.setenv('VFTOK_DATA', str(tmp_path))
  assert demo.default_root(17, 64) == str(
      tmp_path / f'demo-v{demo.BUILD_VERSION}-17x64')


def test_corrupt_record_is_named_or_skipped_and_counted(tmp_path):
  """A damaged byte range in one shard and a NaN record in another: by
  default one error naming file and record; skip_bad_records replaces them
  (batches keep their size), counts them, and stops above the fraction."""
  first = str(tmp_path / 'train-0.array_record')
  records.write_records(first, [example(seed=i, label=i, dtype=np.float32)
                                for i in range(20)])
  (bad,) = corrupt_middle(first)
  second = str(tmp_path / 'train-1.array_record')
  nan = example(seed=20, label=20, dtype=np.float32)
  nan['latents'][0, 0, 0, 0] = np.nan
  writer = array_record_module.ArrayRecordWriter(second, records.WRITER_OPTIONS)
  for ex in [example(seed=i, label=i, dtype=np.float32) for i in (21, 22)] + [
      nan] + [example(seed=i, label=i, dtype=np.float32) for i in (23, 24)]:
    writer.write(records.serialize(ex))  # unchecked, as another tool might
  writer.close()
  cfg = data_config(tmp_path, batch=5)  # 25 records: 5 batches an epoch

  it = pipeline.make_train_iterator(cfg)
  with pytest.raises(records.BadRecordError) as e:
    labels(it, 5)
  msg = str(e.value)
  assert '\n' not in msg and 'skip_bad_records' in msg
  assert (f'{first}: record {bad} is bad: RuntimeError: Corrupted Riegeli'
          in msg or f'{second}: record 2 is bad: ValueError: latents' in msg)

  cfg.skip_bad_records, cfg.max_bad_record_fraction = True, 0.1
  it = pipeline.make_train_iterator(cfg)
  counter = pipeline.bad_record_counter(cfg, cfg.train_pattern)
  epoch = []
  for _ in range(5):
    batch = counter(next(it))
    assert 'bad_records' not in batch and batch['latents'].shape[0] == 5
    epoch += [int(x) for x in batch['label']]
  assert counter.bad == 2 and counter.read == 25
  assert counter.metrics() == {'data/bad_records': 2.0}
  assert bad not in epoch and 20 not in epoch and len(epoch) == 25

  cfg.max_bad_record_fraction = 0.05  # 2 of 25 > 5 %
  it = pipeline.make_train_iterator(cfg)
  counter = pipeline.bad_record_counter(cfg, cfg.train_pattern)
  with pytest.raises(records.BadRecordError,
                     match=r'2 of the \d+ training records read are bad, more '
                     r'than data.max_bad_record_fraction=0.05'):
    for _ in range(5):
      counter(next(it))


def test_token_statistics_are_the_lookup_tables_entropies(tmp_path):
  """8 clips of [1, 2] tokens: slot 0 is always code 7; slot 1 draws 1 or 2
  (half each) for label 0 and is always 3 for label 1."""
  slot1 = {0: [1, 1, 2, 2], 1: [3, 3, 3, 3]}
  examples = [dict(tokens=np.array([[7, code]], np.uint16), label=label,
                   caption='', source=f'synthetic:{label}:{i}')
              for label in (0, 1) for i, code in enumerate(slot1[label])]
  records.write_token_records(
      str(tmp_path / 'train-00000-of-00001.array_record'), examples)
  got = token_records.statistics(str(tmp_path / 'train-*.array_record'))
  ln = np.log
  assert got['clips'] == 8 and got['tokens_shape'] == [1, 2]
  assert got['distinct_codes'] == 4
  # 16 tokens: 7 x 8, 1 x 2, 2 x 2, 3 x 4.
  np.testing.assert_allclose(got['unigram'],
                             0.5 * ln(2) + 2 * 0.125 * ln(8) + 0.25 * ln(4))
  # Slot 0 is certain; slot 1 (half the tokens) is 1, 2, 3 at 1/4, 1/4, 1/2.
  np.testing.assert_allclose(got['per_slot'],
                             0.5 * (2 * 0.25 * ln(4) + 0.5 * ln(2)))
  # Given the label only slot 1 of label 0 (a quarter of the tokens) varies.
  np.testing.assert_allclose(got['per_slot_class'], 0.25 * ln(2))
  with pytest.raises(errors.InputError, match='none-'):
    token_records.statistics(str(tmp_path / 'none-*.array_record'))
