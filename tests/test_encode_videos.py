"""Data preparation: videos -> latent records -> token records, sharded.

Real short videos are written with PyAV in a temp dir (moving patterns), next
to a truncated mp4, random bytes named .avi, a too-short video and a text
file. Covers: listing (folder, CSV / JSONL manifests), decoding, fps
resampling and crops; the encode job -> records -> Grain batches; 2 workers
write disjoint shards whose union equals 1 worker's; a run killed mid-way
and rerun equals an uninterrupted run; bad files are reported, not fatal;
token records equal Tokenizer.tokenize on the same latents and read back
through Grain; the command line entry point.
"""
import filecmp
import json
import os
import subprocess
import sys
import types

import av
import numpy as np
import pytest

import vftok
import testing_utils
from vftok import defaults
from vftok import errors
from vftok.data import codecs
from vftok.models import latent_codecs
from vftok.data import pipeline
from vftok.data import records
from vftok.data import shards
from vftok.data import video_io
from vftok.jobs import encode_videos
from vftok.data import tokens as token_records

from testing_utils import load_config

pytestmark = pytest.mark.e2e  # whole jobs / scripts: see tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (relative path, frames, fps, width, height); 'short' has too few frames.
VIDEOS = (('a/v0.mp4', 40, 24, 64, 48), ('a/v1.mp4', 30, 30, 48, 64),
          ('b/v2.mp4', 36, 24, 64, 64), ('b/v3.mp4', 26, 25, 40, 40),
          ('b/short.mp4', 5, 24, 64, 48))
BAD = ('broken.mp4', 'junk.avi', 'b/short.mp4')


class Killed(BaseException):
  """Stands for the process being killed (not an Exception: nothing in the
  job may swallow it)."""


def write_video(path, frames, fps, width, height, seed=0):
  """A moving square over a gradient, H.264 (or MPEG-4) in mp4."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, 3)
  yy, xx = np.mgrid[:height, :width]
  codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
  with av.open(path, 'w') as c:
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = width, height, 'yuv420p'
    for i in range(frames):
      img = np.empty((height, width, 3), np.uint8)
      img[..., 0] = (xx * 4 + base[0]) % 256
      img[..., 1] = (yy * 4 + base[1] + 6 * i) % 256
      img[..., 2] = base[2]
      x0, y0 = (3 * i) % (width - 12), (2 * i) % (height - 12)
      img[y0:y0 + 12, x0:x0 + 12] = 255
      for p in s.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


@pytest.fixture(scope='module')
def video_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('videos')
  for i, (rel, n, fps, w, h) in enumerate(VIDEOS):
    write_video(str(d / rel), n, fps, w, h, seed=i)
  blob = (d / 'a' / 'v0.mp4').read_bytes()
  (d / 'broken.mp4').write_bytes(blob[:len(blob) // 3])  # truncated
  (d / 'junk.avi').write_bytes(np.random.default_rng(0).bytes(3000))
  (d / 'notes.txt').write_text('not a video')
  return d


def enc_config(video_dir, **overrides):
  """9-frame clips at 12 fps, 32x32, 2 videos per shard: 4 shards."""
  kw = dict(input=str(video_dir), num_frames=9, fps=12.0, clip_stride=4,
            resolution=32, videos_per_shard=2, batch_size=4,
            worker_count=1, worker_index=0, codec_fit_clips=32,
            label_from_dir=True, log_every_s=0.0)
  kw.update(overrides)
  return load_config('encode_videos', **kw)


def record_files(d):
  return sorted(os.path.basename(p) for p in records.expand(
      os.path.join(str(d), 'train-*.array_record')))


def assert_same_output(a, b):
  names = record_files(a)
  assert names and names == record_files(b)
  for n in names + [records.MANIFEST, shards.REPORT]:
    assert filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False), n
  ca = codecs.PatchPCACodec.load(os.path.join(a, encode_videos.CODEC_FILE))
  cb = codecs.PatchPCACodec.load(os.path.join(b, encode_videos.CODEC_FILE))
  for k in ca.params:
    np.testing.assert_array_equal(ca.params[k], cb.params[k])


def no_temp_files(d):
  return not [f for _, _, fs in os.walk(d) for f in fs if '.tmp-' in f]


@pytest.fixture(scope='module')
def encoded(video_dir, tmp_path_factory):
  """The reference: one uninterrupted single-worker run."""
  d = str(tmp_path_factory.mktemp('encoded'))
  manifest = encode_videos.run(enc_config(video_dir), d)
  return d, manifest


# ---- listing and decoding ----------------------------------------------------

def test_list_inputs_folder_and_manifests(video_dir, tmp_path):
  inputs, problems = video_io.list_inputs(str(video_dir))
  rels = [os.path.relpath(v.path, video_dir) for v in inputs]
  assert rels == sorted([v[0] for v in VIDEOS] + ['broken.mp4', 'junk.avi'])
  assert [os.path.basename(p) for p, _ in problems] == ['notes.txt']
  assert 'not a video file' in problems[0][1]
  assert inputs[0].uid == 'a/v0' and inputs[0].label == -1
  labelled, classes = video_io.labels_from_dirs(inputs)
  assert classes == ['a', 'b', os.path.basename(str(video_dir))]
  assert labelled[0].label == 0

  (tmp_path / 'm.csv').write_text(
      'path,label,caption,start,end\n'
      f'{video_dir}/a/v0.mp4,3,a square,0.5,1.5\n'
      f'{video_dir}/b/v2.mp4,,,,\n'
      f'{video_dir}/a/v1.mp4,notanint,x,,\n'
      ',1,no path,,\n')
  inputs, problems = video_io.list_inputs(str(tmp_path / 'm.csv'))
  assert [(v.label, v.caption, v.start, v.end) for v in inputs] == [
      (3, 'a square', 0.5, 1.5), (-1, '', None, None)]
  assert [p.rsplit(':', 1)[1] for p, _ in problems] == ['4', '5']
  (tmp_path / 'm.jsonl').write_text(
      json.dumps(dict(path='v.mp4', label=1, caption='c')) + '\n{oops\n')
  inputs, problems = video_io.list_inputs(str(tmp_path / 'm.jsonl'))
  assert inputs[0].path == str(tmp_path / 'v.mp4') and inputs[0].label == 1
  assert len(problems) == 1 and 'bad manifest row' in problems[0][1]
  with pytest.raises(ValueError, match='not a folder'):
    video_io.list_inputs(str(tmp_path / 'nothing-*.mp4'))


def test_resample_picks_nearest_frames():
  src = [(i / 24, i) for i in range(10)]
  assert list(video_io.resample(iter(src), 12)) == [0, 2, 4, 6, 8]
  assert list(video_io.resample(iter(src), 0)) == list(range(10))
  assert list(video_io.resample(iter(src[:3]), 36)) == [0, 1, 1, 2]  # up
  # Irregular timestamps: nearest in time.
  src = [(0.0, 'a'), (0.09, 'b'), (0.33, 'c')]
  assert list(video_io.resample(iter(src), 10)) == ['a', 'b', 'b', 'c']


def test_clips_crops_and_problems(video_dir):
  inputs, _ = video_io.list_inputs(str(video_dir))
  params = video_io.ClipParams(num_frames=9, resolution=32, fps=12.0)
  clips, problems = video_io.read_clips(inputs, params)
  assert clips and all(c.frames.shape == (9, 32, 32, 3) and
                       c.frames.dtype == np.uint8 for c in clips)
  # v0: 40 frames at 24 fps -> 20 at 12 fps -> clips at 0 and 9.
  assert [c.start for c in clips if c.video.uid == 'a/v0'] == [0, 9]
  reasons = {os.path.relpath(p, video_dir): r for p, r in problems}
  assert sorted(reasons) == sorted(BAD)
  assert reasons['b/short.mp4'].startswith('too short: 3 frames')
  assert reasons['broken.mp4'].startswith('unreadable')
  assert reasons['junk.avi'].startswith('unreadable')
  # Random crops: reproducible per (seed, video, clip), and not all central.
  rnd = video_io.ClipParams(num_frames=9, resolution=32, crop='random', seed=1)
  a, _ = video_io.read_clips(inputs[:1], rnd)
  b, _ = video_io.read_clips(inputs[:1], rnd)
  center, _ = video_io.read_clips(inputs[:1], video_io.ClipParams(
      num_frames=9, resolution=32))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.frames, y.frames)
  assert any(not np.array_equal(x.frames, z.frames) for x, z in zip(a, center))
  with pytest.raises(ValueError, match='4n\\+1'):
    video_io.ClipParams(num_frames=16)


def test_tfds_inputs(monkeypatch):
  """tfds:NAME[:SPLIT] through a stand-in tensorflow_datasets module."""
  rng = np.random.default_rng(0)
  examples = [dict(video=rng.integers(0, 256, (n, 48, 64, 3), np.uint8),
                   label=i + 2) for i, n in enumerate((20, 4))]
  fake = types.SimpleNamespace(data_source=lambda name, split, data_dir: (
      examples if (name, split) == ('toy/v1', 'test') else None))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake)
  video_io._tfds_source.cache_clear()  # pylint: disable=protected-access
  inputs, problems = video_io.list_inputs('tfds:toy/v1:test')
  assert [v.uid for v in inputs] == ['toy/v1/test/0', 'toy/v1/test/1']
  params = video_io.ClipParams(num_frames=9, resolution=32, tfds_fps=24.0,
                               fps=12.0)
  clips, problems = video_io.read_clips(inputs, params)
  assert [(c.start, c.label, c.frames.shape) for c in clips] == [
      (0, 2, (9, 32, 32, 3))]
  assert problems == [('tfds:toy/v1:test:1',
                       'too short: 2 frames at 12 fps, a clip needs 9')]
  video_io._tfds_source.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(ImportError, match='pip install tensorflow-datasets'):
    video_io.list_inputs('tfds:toy/v1')


# ---- encode job --------------------------------------------------------------

def test_encode_records_and_grain_batches(video_dir, encoded):
  d, m = encoded
  exs = records.read_records(os.path.join(d, 'train-*.array_record'))
  assert len(record_files(d)) == 4 and m['counts'] == {'train': len(exs)}
  assert m['latent_shape'] == [3, 4, 4, 16] and m['latent_dtype'] == 'float16'
  assert m['frames_shape'] == [9, 32, 32, 3] and m['codec'] == 'pca_offline'
  assert m['source_fps'] == {'24': 2, '25': 1, '30': 1}
  assert m['classes'] == ['a', 'b', video_dir.name]  # label_from_dir
  assert {ex['source'].rsplit(':', 1)[0] for ex in exs} == {
      'a/v0', 'a/v1', 'b/v2', 'b/v3'}
  assert {ex['label'] for ex in exs} == {0, 1}
  # Manifest stats are those of the data as written (float16).
  lat = np.stack([ex['latents'] for ex in exs]).astype(np.float64)
  lat = lat.reshape(-1, 16)
  np.testing.assert_allclose(m['latent_mean'], lat.mean(0), atol=1e-9)
  np.testing.assert_allclose(m['latent_std'], lat.std(0), rtol=1e-6)
  report = shards.read_json(os.path.join(d, shards.REPORT))
  assert report['videos'] == 7 and report['videos_encoded'] == 4
  bad = sorted(os.path.basename(p['path']) for p in report['problems'])
  assert bad == ['broken.mp4', 'junk.avi', 'notes.txt', 'short.mp4']
  assert no_temp_files(d)

  cfg = defaults.tokenizer_config().data
  cfg.train_pattern = os.path.join(d, 'train-*.array_record')
  cfg.global_batch_size = 4
  data = pipeline.resolve_patterns(cfg)
  assert data.codec_name == 'pca_offline' and os.path.exists(data.codec_path)
  b = next(pipeline.make_train_iterator(cfg, data))
  assert b['latents'].shape == (4, 3, 4, 4, 16)
  assert b['latents'].dtype == np.float32 and b['label'].shape == (4,)
  # Decoding the records' latents gets back to the pixels of the videos.
  codec = latent_codecs.load_codec(data)
  recon = codec.decode(pipeline.make_denormalizer(data)(b['latents']))
  assert recon.shape == (4, 9, 32, 32, 3)


def test_two_workers_equal_one(video_dir, encoded, tmp_path):
  d = str(tmp_path)
  assert encode_videos.run(enc_config(video_dir, worker_count=2), d) is None
  assert record_files(d) == ['train-00000-of-00004.array_record',
                             'train-00002-of-00004.array_record']
  assert not os.path.exists(os.path.join(d, records.MANIFEST))
  with pytest.raises(ValueError, match='2 of 4 shards'):
    encode_videos.run(enc_config(video_dir, finalize=True), d)
  # Worker 1 writes the other shards and, finding all done, the manifest.
  m = encode_videos.run(enc_config(video_dir, worker_count=2,
                                   worker_index=1), d)
  assert m is not None
  assert_same_output(encoded[0], d)
  # A finalize pass rewrites the same manifest.
  before = open(os.path.join(d, records.MANIFEST)).read()
  encode_videos.run(enc_config(video_dir, finalize=True), d)
  assert open(os.path.join(d, records.MANIFEST)).read() == before


def test_killed_run_resumes_to_the_same_records(video_dir, encoded, tmp_path,
                                                monkeypatch):
  d = str(tmp_path)
  real = records.write_records
  calls = []
  die = [True]

  def dies_in_shard_2(path, examples, *a, **k):
    calls.append(os.path.basename(path))
    if die[0] and len(calls) == 2:
      def some_then_die():
        yield next(iter(examples))
        raise Killed('killed')
      return real(path, some_then_die(), *a, **k)
    return real(path, examples, *a, **k)

  monkeypatch.setattr(records, 'write_records', dies_in_shard_2)
  with pytest.raises(Killed):
    encode_videos.run(enc_config(video_dir), d)
  assert record_files(d) == ['train-00000-of-00004.array_record']
  assert no_temp_files(d)
  # What a SIGKILL would leave: a temp file, and a shard without its stats.
  open(os.path.join(d, 'train-00002-of-00004.array_record.tmp-999999'),
       'wb').write(b'partial')
  open(os.path.join(d, 'train-00003-of-00004.array_record'), 'wb').write(b'x')
  calls.clear()
  die[0] = False
  encode_videos.run(enc_config(video_dir), d)
  assert calls == ['train-00001-of-00004.array_record',
                   'train-00002-of-00004.array_record',
                   'train-00003-of-00004.array_record']  # shard 0 skipped
  assert_same_output(encoded[0], d)
  assert no_temp_files(d)
  calls.clear()
  encode_videos.run(enc_config(video_dir), d)  # all done: nothing rewritten
  assert not calls
  with pytest.raises(ValueError, match='another plan'):
    encode_videos.run(enc_config(video_dir, resolution=64), d)


VIDTOK_WEIGHTS = os.path.join(ROOT, 'tests', 'fixtures', 'vidtok',
                              'model.safetensors')  # tiny VidTok (ch=8)


def test_vidtok_codec_encodes_the_demo_videos(tmp_path):
  """encode_videos --config.codec=vidtok: the JAX VidTok, sharded over the
  8 test devices, on two of the embedded demo videos."""
  from vftok.data import demo  # pylint: disable=g-import-not-at-top
  src = tmp_path / 'videos'
  src.mkdir()
  for name in ('bikes.mp4', 'carphone_pristine.mp4'):
    os.symlink(os.path.join(demo.video_dir(), name), src / name)
  d = str(tmp_path / 'enc')
  config = enc_config(src, codec='vidtok', codec_path=VIDTOK_WEIGHTS,
                      max_clips_per_video=2, fps=8.0, label_from_dir=False,
                      store_frames=True, latent_dtype='float32')
  m = encode_videos.run(config, d)
  assert m['codec'] == 'vidtok' and m['codec_path'] == VIDTOK_WEIGHTS
  assert m['latent_shape'] == [3, 4, 4, 16] and m['counts'] == {'train': 4}
  exs = records.read_records(os.path.join(d, 'train-*.array_record'))
  frames = np.stack([ex['frames'] for ex in exs])
  latents = np.stack([ex['latents'] for ex in exs])
  # The sharded, padded codec equals the plain VidTok on the same clips.
  vae = vftok.VidTok.load(VIDTOK_WEIGHTS)
  want = np.asarray(vae.encode(frames / 127.5 - 1))
  np.testing.assert_allclose(latents, want, atol=1e-5)
  # Pixels back through the codec the data set names.
  cfg = defaults.tokenizer_config().data
  cfg.train_pattern = os.path.join(d, 'train-*.array_record')
  codec = latent_codecs.load_codec(pipeline.resolve_patterns(cfg))
  recon = codec.decode(latents[:3])
  assert recon.shape == (3, 9, 32, 32, 3) and recon.dtype == np.float32
  assert 0 <= recon.min() and recon.max() <= 255
  with pytest.raises(ValueError, match='VidTok weights'):
    latent_codecs.get_codec('vidtok', str(tmp_path / 'nothing.ckpt'))


# ---- tokenize job ------------------------------------------------------------

@pytest.fixture(scope='module')
def tok():
  c = testing_utils.tiny_tokenizer_config()
  c.model.latent_channels = 16  # the encoded clips: [3, 4, 4, 16]
  return vftok.Tokenizer.from_config(c, seed=0)


def tok_config(encoded_dir, **overrides):
  kw = dict(input=os.path.join(encoded_dir, 'train-*.array_record'),
            batch_size=4, worker_count=1, worker_index=0, log_every_s=0.0)
  kw.update(overrides)
  return load_config('tokenize_dataset', **kw)


def test_token_records_round_trip(encoded, tok, tmp_path):
  src, latent_manifest = encoded
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  m = token_records.tokenize_records(tok_config(src), one, tok)
  lat = records.read_records(os.path.join(src, 'train-*.array_record'))
  got = records.read_records(os.path.join(one, 'train-*.array_record'))
  assert m['counts'] == {'train': len(lat)} and m['tokens_shape'] == [3, 4]
  assert m['vocab_size'] == 64000 and m['tokens_dtype'] == 'uint16'
  data = pipeline.Data('', '', latent_manifest)  # the trainer's normalisation
  x = np.stack([ex['latents'] for ex in lat]).astype(np.float32)
  want = np.asarray(tok.tokenize((x - data.latent_mean) / data.latent_std))
  ids = np.stack([ex['tokens'] for ex in got])
  assert ids.dtype == np.uint16
  np.testing.assert_array_equal(ids, want)
  for a, b in zip(lat, got):
    assert (a['label'], a['caption'], a['source']) == (
        b['label'], b['caption'], b['source'])
  with pytest.raises(ValueError, match='missing'):
    records.validate_token_example(dict(tokens=ids[0], label=1, caption=''))
  with pytest.raises(ValueError, match='uint16'):
    records.validate_token_example(dict(got[0], tokens=ids[0].astype(int)))

  # Two workers: the same files.
  assert token_records.tokenize_records(tok_config(src, worker_count=2), two,
                                       tok) is None
  token_records.tokenize_records(
      tok_config(src, worker_count=2, worker_index=1), two, tok)
  for n in record_files(one) + [records.MANIFEST]:
    assert filecmp.cmp(os.path.join(one, n), os.path.join(two, n),
                       shallow=False), n

  # Grain: shuffled batches of int32 ids, captions on request.
  cfg = defaults.tokenizer_config().data
  cfg.global_batch_size = 4
  it = pipeline.make_token_iterator(
      cfg, os.path.join(one, 'train-*.array_record'),
      fields=('tokens', 'label', 'caption'))
  b = next(it)
  assert b['tokens'].shape == (4, 3, 4) and b['tokens'].dtype == np.int32
  assert b['label'].dtype == np.int32 and b['caption'].shape == (4,)
  with pytest.raises(errors.InputError,
                     match='matches no token record files; make them with: '
                     r'.*configs/tokenize_dataset\.py'):
    pipeline.make_token_iterator(cfg, str(tmp_path / 'none-*'))


def test_long_clips_are_encoded_per_chunk_and_tokenized_long(video_dir, tok,
                                                            tmp_path):
  """21-frame clips (> 17): two 17-frame chunks sharing frame 16, each
  encoded alone ([5 + 2, h, w, C] latents, manifest `chunks`); the token
  records hold tokenize_long's [6, K], budget-truncated on request; the
  tokenizer trainer refuses such records."""
  d = str(tmp_path / 'long')
  manifest = encode_videos.run(enc_config(
      video_dir, num_frames=21, fps=0.0, clip_stride=40, store_frames=True),
      d)
  assert manifest['latent_shape'] == [7, 4, 4, 16]
  assert manifest['chunks'] == dict(num_frames=21, chunk_frames=17, overlap=1,
                                    latent_frames=[5, 2])
  lat = records.read_records(os.path.join(d, 'train-*.array_record'))
  assert lat and all(ex['latents'].shape == (7, 4, 4, 16) for ex in lat)
  codec = codecs.PatchPCACodec.load(os.path.join(d, encode_videos.CODEC_FILE))
  frames = lat[0]['frames'][None]
  want = np.concatenate([codec.encode(frames[:, :17]),
                         codec.encode(frames[:, 16:])], axis=1)
  np.testing.assert_allclose(lat[0]['latents'][None].astype(np.float32), want,
                             atol=2e-2)   # the record stores float16
  out = str(tmp_path / 'tokens')
  # One batch of every clip: the same compiled shapes as the check below
  # (FSQ rounding can flip between batch sizes on random weights).
  m = token_records.tokenize_records(
      tok_config(d, tokens_per_frame=2, batch_size=len(lat)), out, tok)
  assert m['tokens_shape'] == [6, 2] and m['num_frames'] == 21
  got = records.read_records(os.path.join(out, 'train-*.array_record'))
  data = pipeline.Data('', '', manifest, normalize=tok.config.data.normalize)
  x = pipeline.make_normalizer(data)(np.stack([ex['latents'] for ex in lat]))
  long_tokens = tok.tokenize_long([x[:, :5], x[:, 5:]])
  np.testing.assert_array_equal(np.stack([ex['tokens'] for ex in got]),
                                long_tokens[:, :, :2])
  with pytest.raises(errors.InputError, match='tokens_per_frame=9'):
    token_records.tokenize_records(tok_config(d, tokens_per_frame=9),
                                   str(tmp_path / 'bad'), tok)
  c = defaults.tokenizer_config()
  c.data.kind, c.data.train_pattern = 'records', os.path.join(
      d, 'train-*.array_record')
  from vftok.jobs import train_tokenizer  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.InputError, match='21-frame clips stored chunk'):
    train_tokenizer.check_inputs(c, str(tmp_path / 'work'))


def test_token_records_with_precomputed_text_embeddings(encoded, tok, tmp_path):
  """config.text_encoder stores each caption's encoder outputs (here the real
  all-MiniLM-L6-v2 from its wheel) beside the tokens."""
  from vftok.models.pretrained import text_encoders
  src, _ = encoded
  out = str(tmp_path / 'emb')
  m = token_records.tokenize_records(
      tok_config(src, text_encoder='minilm', text_max_length=8), out, tok,
      text_encoder=text_encoders.get('minilm', max_length=8))
  assert m['fields']['train'][-2:] == ['text_emb', 'text_mask']
  got = records.read_records(os.path.join(out, 'train-*.array_record'))
  enc = text_encoders.get('minilm', max_length=8)
  emb, mask = enc.encode([got[0]['caption']], 8)
  assert got[0]['text_emb'].shape == (8, 384) and got[0]['text_emb'].dtype == np.float16
  np.testing.assert_allclose(got[0]['text_emb'], np.asarray(emb[0]), atol=2e-2)
  np.testing.assert_array_equal(got[0]['text_mask'], np.asarray(mask[0]).astype(np.uint8))
  cfg = defaults.tokenizer_config().data
  cfg.global_batch_size = 4
  b = next(pipeline.make_token_iterator(
      cfg, os.path.join(out, 'train-*.array_record'),
      fields=('tokens', 'text_emb', 'text_mask')))
  assert b['text_emb'].shape == (4, 8, 384) and b['text_mask'].dtype == bool
  with pytest.raises(ValueError, match='together'):
    records.validate_token_example(dict(got[0], text_mask=None))


# ---- command line ------------------------------------------------------------

def test_command_line_with_a_manifest(video_dir, tmp_path):
  """A CSV manifest (labels, captions, one segment) -> eval records with RGB
  frames, through `python -m vftok.main`."""
  (tmp_path / 'm.csv').write_text(
      'path,label,caption,start,end,id\n'
      f'{video_dir}/a/v0.mp4,3,a square,0.5,1.5,v0\n'
      f'{video_dir}/b/v2.mp4,5,another,,,\n'
      f'{video_dir}/missing.mp4,1,gone,,,\n')
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'vftok.main', '--config=configs/encode_videos.py',
       f'--workdir={out}', f'--config.input={tmp_path}/m.csv',
       '--config.num_frames=9', '--config.resolution=32',
       '--config.split=eval', '--config.store_frames=True',
       '--config.worker_count=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'clips/s' in proc.stderr
  m = records.read_manifest(str(out))
  assert m['videos'] == dict(total=3, encoded=2)
  assert m['fields'] == {'eval': ['latents', 'label', 'caption', 'source',
                                  'frames']}
  exs = records.read_records(str(out / 'eval-*.array_record'))
  # v0 from 0.5 s to 1.5 s: 24 frames at 24 fps -> clips at 0 and 9. Without
  # an id, the source names the path as the manifest gives it.
  v2 = str(video_dir / 'b' / 'v2')
  assert [(e['label'], e['caption'], e['source']) for e in exs] == [
      (3, 'a square', 'v0@0.5-1.5:0'), (3, 'a square', 'v0@0.5-1.5:9'),
      (5, 'another', f'{v2}:0'), (5, 'another', f'{v2}:9'),
      (5, 'another', f'{v2}:18'), (5, 'another', f'{v2}:27')]
  report = shards.read_json(str(out / shards.REPORT))
  assert [p['path'] for p in report['problems']] == [
      str(video_dir / 'missing.mp4')]
  assert 'FileNotFoundError' in report['problems'][0]['reason']

  cfg = defaults.tokenizer_config().data
  cfg.train_pattern = cfg.eval_pattern = str(out / 'eval-*.array_record')
  ev = pipeline.make_eval_batches(cfg, num_clips=8, batch_size=4)
  assert ev[0]['frames'].shape == (4, 9, 32, 32, 3)
  assert sum(len(b['label']) for b in ev) == 6
