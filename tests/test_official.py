"""Released VideoFlexTok checkpoints: from_official reproduces the release.

tests/fixtures/official/ is a tiny checkpoint written by the release's own
code (apple/ml-videoflextok @ 4fd72ec) with its float32 CPU outputs; its
README lists every array and how it was made. Arrays there are channels-first
[B, C, T, H, W]; vftok is channels-last.
"""
import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

import testing_utils
from vftok import api
from vftok.models import fsq
from vftok.models import tokenizer as tl
from vftok.models.pretrained import official

HERE = os.path.dirname(__file__)
CKPT = os.path.join(HERE, 'fixtures', 'official', 'model.safetensors')
REF = os.path.join(HERE, 'fixtures', 'official', 'reference.npz')
SHAPE = (3, 4, 6)
# The figures of docs/design.md ("Released checkpoints"). Measured (CPU,
# jax 0.10.2): encoder and decoder
# outputs max |diff| 6.6e-6, whole 4-step detokenize 4.9e-5 (APG at scale 25
# amplifies float rounding); each bound is ~1.5x that.
TOL = 1e-5
DETOK_TOL = 7.5e-5


def _cl(a):
  return np.moveaxis(np.asarray(a), 1, -1)


@pytest.fixture(scope='module')
def ref():
  return dict(np.load(REF))


@pytest.fixture(scope='module')
def tok():
  return api.Tokenizer.from_official(CKPT, latent_shape=SHAPE)


def _close(got, want, name, tol=TOL):
  err = float(np.max(np.abs(np.asarray(got) - want)))
  assert err <= tol, f'{name}: max |diff| {err:.2e} > {tol:.1e}'


def test_config_maps_the_release(tok):
  m = tok.config.model
  assert (m.enc_width, m.enc_depth, m.head_dim, m.tokens_per_frame) == (64, 2, 32, 8)
  assert m.max_frames == 4 and m.pos_max_size == 8 and m.pos_kind == 'sum'
  assert m.decoder_attention == 'time_causal' and m.decoder_registers_first
  assert m.adaln_subsequences == 2 and tuple(m.fsq_levels) == (8, 8, 8, 5, 5, 5)


def test_encoder_and_tokens(tok, ref):
  lat = _cl(ref['latents'])
  np.testing.assert_array_equal(np.asarray(tok.tokenize(lat)), ref['tokens'])
  (codes, z), st = tok.model.apply(tok.params, lat, method=tl.VideoFlexTok.encode,
                                   mutable=['intermediates'])
  it = st['intermediates']['encoder']
  _close(np.asarray(it['patches_in'][0]).reshape(ref['enc_patches_in'].shape),
         ref['enc_patches_in'], 'enc_patches_in')
  _close(it['registers_in'][0], ref['enc_registers_in'], 'enc_registers_in')
  _close(it['registers_out'][0], ref['enc_registers_out'], 'enc_registers_out')
  _close(z, ref['enc_fsq_latents'], 'enc_fsq_latents')
  np.testing.assert_array_equal(np.asarray(codes), ref['fsq_quants'])
  np.testing.assert_array_equal(
      np.asarray(fsq.indices_to_codes(ref['tokens'])), ref['quant_from_tokens'])


def test_decoder_predictions(tok, ref):
  q = fsq.indices_to_codes(ref['tokens'])
  xt, t = _cl(ref['dec_xt']), np.full((2,), ref['dec_t'], np.float32)
  dec = lambda *a: tok.model.apply(tok.params, *a,
                                   method=tl.VideoFlexTok.decode)[0]
  for k in (1, 2, 4, 8):
    _close(dec(q, xt, t, tl.keep_first(k, 2, 8)), _cl(ref[f'dec_pred_k{k}']),
           f'dec_pred_k{k}')
    _close(dec(q[:, :, :k], xt, t), _cl(ref[f'dec_pred_trunc_k{k}']),
           f'dec_pred_trunc_k{k}')
  _close(dec(q, xt, t, None, jnp.ones(2, bool)), _cl(ref['dec_pred_uncond']),
         'dec_pred_uncond')
  # Per-clip flow times: each clip as if decoded alone (the release's batched
  # call mixes clips' adaLN rows; its per-clip result is the correct one).
  _close(dec(q, _cl(ref['dec_xt_mixed']), ref['dec_t_mixed']),
         _cl(ref['dec_pred_mixed_t_separate']), 'dec_pred_mixed_t_separate')


APG = dict(guidance='apg', guidance_scale=25.0, apg_eta=0.0, apg_momentum=0.0,
           apg_norm_threshold=0.6)
DETOK = {
    'detok_k2_noguid': (2, dict(guidance_scale=1.0)),
    'detok_k2_apg': (2, APG),
    'detok_k8_noguid': (8, dict(guidance_scale=1.0)),
    'detok_k8_apg': (8, APG),
    'detok_k8_cfg3': (8, dict(guidance='cfg', guidance_scale=3.0)),
    'detok_trunc_k2_apg': (2, dict(APG, pad_with_mask_token=False)),
}


def test_detokenize(tok, ref):
  noise = _cl(ref['detok_noise'])
  for name, (k, kwargs) in DETOK.items():
    out = tok.detokenize(ref['tokens'][:, :, :k], steps=4, noise=noise, **kwargs)
    _close(out, _cl(ref[name]), name, DETOK_TOL)
  # from_official(path) alone: the size comes from the latents and the noise.
  plain = api.Tokenizer.from_official(CKPT)
  np.testing.assert_array_equal(np.asarray(plain.tokenize(_cl(ref['latents']))),
                                ref['tokens'])
  k, kwargs = DETOK['detok_k2_apg']
  _close(plain.detokenize(ref['tokens'][:, :, :k], steps=4, noise=noise,
                          **kwargs), _cl(ref['detok_k2_apg']), 'plain', DETOK_TOL)


# tests/fixtures/official_p122: [1, 2, 2] patches, written by the release's
# code (its make_fixture.py) with tokenize / detokenize at several latent
# sizes; from_official(path) alone must take each of them.
P122 = os.path.join(HERE, 'fixtures', 'official_p122')


@pytest.fixture(scope='module')
def p122():
  with open(os.path.join(P122, 'meta.json')) as f:
    meta = json.load(f)
  return (api.Tokenizer.from_official(os.path.join(P122, 'model.safetensors')),
          dict(np.load(os.path.join(P122, 'reference.npz'))), meta)


def test_release_checkpoint_takes_any_latent_size(p122):
  """Square, 16:9-like, tall and the largest size the position tables
  cover: tokens equal, detokenize at k = 2 and 8, no guidance and the
  notebook's APG, within the dev fixture's tolerance."""
  tok, ref, meta = p122
  assert tuple(tok.config.model.patch_size) == (1, 2, 2)
  assert len(meta['sizes']) == 4
  for name, (t, h, w) in meta['sizes'].items():
    lat = _cl(ref[f'latents_{name}'])
    tokens = np.asarray(tok.tokenize(lat))
    np.testing.assert_array_equal(tokens, ref[f'tokens_{name}'], err_msg=name)
    noise = _cl(ref[f'detok_noise_{name}'])
    for k in meta['keep']:
      for kind, kwargs in (('noguid', dict(guidance_scale=1.0)),
                           ('apg', APG)):
        want = _cl(ref[f'detok_{name}_k{k}_{kind}'])
        # The size from the noise, and from latent_size with seeded noise.
        out = tok.detokenize(tokens[:, :, :k], steps=meta['timesteps'],
                             noise=noise, **kwargs)
        _close(out, want, f'detok_{name}_k{k}_{kind}', DETOK_TOL)
    sized = tok.detokenize(tokens, steps=1, latent_size=(h, w))
    assert sized.shape == (2, t, h, w, 16)


def test_latent_sizes_outside_the_model_are_one_error(p122):
  tok = p122[0]
  lat = lambda t, h, w: np.zeros((1, t, h, w, 16), np.float32)
  for shape, match in (((2, 5, 8), 'multiples of the patch size 2 x 2'),
                       ((2, 18, 8), 'position tables cover 8 per axis'),
                       ((5, 8, 8), 'registers and position tables cover 4')):
    with pytest.raises(ValueError, match=match):
      tok.tokenize(lat(*shape))
  tokens = np.zeros((1, 2, 8), np.int32)
  with pytest.raises(ValueError, match=r'at latent_size \(6, 20\)'):
    tok.detokenize(tokens, steps=1, latent_size=(6, 20))
  with pytest.raises(ValueError, match='this stream takes'):
    tok.stream().push(lat(1, 6, 8)[:, 0])


def test_notebook_sampling_defaults(tok):
  assert tok.sample_defaults() == dict(
      steps=40, guidance='apg', guidance_scale=25.0, apg_momentum=0.0,
      apg_eta=0.0, apg_norm_threshold=0.6, time_shift=1.0)


def test_conversion_job_workdir(tmp_path, ref):
  from vftok.jobs import convert_official
  from configs import convert_official as cfg_lib
  cfg = cfg_lib.get_config()
  cfg.path, cfg.latent_shape = CKPT, SHAPE
  workdir = str(tmp_path / 'converted')
  convert_official.run(cfg, workdir)
  tok = api.Tokenizer.from_checkpoint(workdir)
  np.testing.assert_array_equal(
      np.asarray(tok.tokenize(_cl(ref['latents']))), ref['tokens'])
  out = tok.detokenize(ref['tokens'], steps=4, noise=_cl(ref['detok_noise']),
                       **APG)
  _close(out, _cl(ref['detok_k8_apg']), 'detok_k8_apg via workdir', DETOK_TOL)
  with pytest.raises(ValueError, match='already holds'):
    convert_official.run(cfg, workdir)


def test_a_converted_release_checkpoint_distils(tmp_path):
  """from_official -> distil -> from_checkpoint: the converted workdir is the
  teacher of configs/demo.py:distill's stage (its model adopted), which
  trains on latent records of the checkpoint's clip shape."""
  from configs import convert_official as cfg_lib
  from testing_utils import load_config
  from vftok.data import records
  from vftok.jobs import convert_official
  from vftok.jobs import train_tokenizer
  cfg = cfg_lib.get_config()
  cfg.path, cfg.latent_shape = CKPT, SHAPE
  teacher_dir = str(tmp_path / 'converted')
  convert_official.run(cfg, teacher_dir)
  rng = np.random.default_rng(0)
  os.makedirs(tmp_path / 'data')
  records.write_records(str(tmp_path / 'data' / 'train-0.array_record'), [
      dict(latents=rng.normal(size=SHAPE + (16,)).astype(np.float16),
           label=0, caption='', source=f'clip:{i}') for i in range(8)])
  c = load_config('demo', 'distill')
  c.data.kind, c.data.normalize = 'records', 'none'
  c.data.train_pattern = str(tmp_path / 'data' / 'train-*.array_record')
  c.train.init_from = teacher_dir
  c.sample.steps = 2
  c.train.total_steps, c.train.eval_every, c.train.checkpoint_every = 2, 0, 2
  c.train.log_every = 1
  out = str(tmp_path / 'student')
  train_tokenizer.run(c, out, writer=testing_utils.Recorder())
  student = api.Tokenizer.from_checkpoint(out)
  teacher = api.Tokenizer.from_checkpoint(teacher_dir)
  assert student.is_distilled and student.config.model.dec_width == 64
  x = rng.normal(size=(1,) + SHAPE + (16,)).astype(np.float32)
  tokens = student.tokenize(x)
  np.testing.assert_array_equal(tokens, teacher.tokenize(x))
  out = np.asarray(student.detokenize(tokens))
  assert out.shape == (1,) + SHAPE + (16,) and np.all(np.isfinite(out))


# ---- bad checkpoints: one clear error, nothing written ----------------------

def _read(path):
  with open(path, 'rb') as f:
    data = f.read()
  n = struct.unpack('<Q', data[:8])[0]
  return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header, body):
  raw = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)) + raw + body)


def _edit_metadata(tmp_path, fn):
  header, body = _read(CKPT)
  fn(header['__metadata__'])
  path = str(tmp_path / 'bad.safetensors')
  _write(path, header, body)
  return path


def _drop_tensor(tmp_path, name):
  from safetensors.numpy import load_file, save_file
  header, _ = _read(CKPT)
  tensors = load_file(CKPT)
  fn = name(tensors)
  path = str(tmp_path / 'bad.safetensors')
  save_file(tensors, path, metadata=header['__metadata__'])
  return path, fn


def test_unsafe_target_refused(tmp_path):
  path = _edit_metadata(tmp_path, lambda m: m.__setitem__(
      'encoder', m['encoder'].replace(
          'videoflextok.model.utils.wrappers.SequentialModuleDictWrapper',
          'os.system')))
  with pytest.raises(official.CheckpointError, match="'os.system' is not one"):
    api.Tokenizer.from_official(path, SHAPE)


def test_non_yaml_metadata_refused(tmp_path):
  path = _edit_metadata(tmp_path, lambda m: m.__setitem__(
      'regularizer', "!!python/object/apply:os.system ['true']"))
  with pytest.raises(official.CheckpointError, match="'regularizer' is not plain"):
    api.Tokenizer.from_official(path, SHAPE)


def test_unsupported_option_names_field(tmp_path):
  path = _edit_metadata(tmp_path, lambda m: m.__setitem__(
      'decoder', m['decoder'].replace("'time_block_causal'", "'causal'")))
  with pytest.raises(official.CheckpointError,
                     match=r'dec_seq_packer\.mask_mode = .causal.'):
    api.Tokenizer.from_official(path, SHAPE)


def test_missing_extra_and_misshaped_tensors(tmp_path):
  key = 'decoder.module_dict.dec_latent_dropout.nullcond'
  path, _ = _drop_tensor(tmp_path, lambda t: t.pop(key))
  with pytest.raises(official.CheckpointError, match=f'missing tensor {key}'):
    api.Tokenizer.from_official(path, SHAPE)
  path, _ = _drop_tensor(tmp_path, lambda t: t.__setitem__(
      'decoder.module_dict.bogus.weight', np.zeros(3, np.float32)))
  with pytest.raises(official.CheckpointError,
                     match='unexpected tensor decoder.module_dict.bogus'):
    api.Tokenizer.from_official(path, SHAPE)
  key = 'encoder.module_dict.enc_transformer.blocks.1.mlp.fc1.weight'
  path, _ = _drop_tensor(tmp_path, lambda t: t.__setitem__(
      key, np.zeros((171, 64), np.float32)))
  with pytest.raises(official.CheckpointError,
                     match=rf'{key} has shape \(171, 64\).*needs \(170, 64\)'):
    api.Tokenizer.from_official(path, SHAPE)


def test_truncated_file(tmp_path):
  with open(CKPT, 'rb') as f:
    data = f.read()
  path = str(tmp_path / 'cut.safetensors')
  with open(path, 'wb') as f:
    f.write(data[:len(data) - 1000])
  with pytest.raises(official.CheckpointError, match='truncated'):
    api.Tokenizer.from_official(path, SHAPE)
  job_dir = tmp_path / 'job'
  from vftok.jobs import convert_official
  from configs import convert_official as cfg_lib
  cfg = cfg_lib.get_config()
  cfg.path, cfg.latent_shape = path, SHAPE
  with pytest.raises(official.CheckpointError):
    convert_official.run(cfg, str(job_dir))
  assert not job_dir.exists() or not any(job_dir.iterdir())


def test_loads_sharded_into_a_mesh(ref):
  import jax
  from vftok import sharding
  import ml_collections
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 8}))
  tok = api.Tokenizer.from_official(CKPT, latent_shape=SHAPE, mesh=mesh)
  kernel = tok.params['params']['encoder']['blocks_0']['mlp']['fc1']['kernel']
  # fsdp shards the 'embed' (width 64) dimension: 8 rows per device.
  assert kernel.sharding.shard_shape(kernel.shape) == (8, 170)
  assert len(jax.tree.leaves(tok.params)) > 0
  np.testing.assert_array_equal(np.asarray(tok.tokenize(_cl(ref['latents']))),
                                ref['tokens'])


def test_release_file_with_vidtok_works_on_pixels(tmp_path):
  """A release file carries VidTok under `vae.vidtok.`: from_official attaches
  it, and encode_video / decode_video go pixels -> tokens -> pixels."""
  from safetensors.numpy import load_file, save_file
  header, _ = _read(CKPT)
  tensors = load_file(CKPT)
  vae_file = os.path.join(HERE, 'fixtures', 'vidtok', 'model.safetensors')
  tensors.update({f'vae.vidtok.{k}': v for k, v in load_file(vae_file).items()})
  path = str(tmp_path / 'with_vae.safetensors')
  save_file(tensors, path, metadata=header['__metadata__'])
  tok = api.Tokenizer.from_official(path)   # any frame size: 32 x 48 here
  assert tok.vae is not None
  frames = np.random.default_rng(0).integers(0, 256, (2, 9, 32, 48, 3),
                                             dtype=np.uint8)
  tokens = tok.encode_video(frames)
  want = tok.tokenize(np.asarray(tok.vae.encode(frames / 127.5 - 1.0)))
  np.testing.assert_array_equal(tokens, np.asarray(want))
  video = tok.decode_video(tokens[:, :, :2], steps=2, latent_size=(4, 6))
  assert video.shape == frames.shape and video.dtype == np.uint8
  with pytest.raises(ValueError, match='uint8'):
    tok.encode_video(frames.astype(np.float32))
  plain = api.Tokenizer.from_official(CKPT, latent_shape=SHAPE)
  with pytest.raises(ValueError, match='no VAE'):
    plain.encode_video(frames)


@pytest.mark.e2e  # a whole train step / pipeline
def test_long_video_on_pixels_through_the_vae():
  """4n+1 > 17 frames: encode_video tokenizes 17-frame chunks sharing one
  frame; decode_video decodes chunk by chunk, each conditioned on the
  previous chunk's last decoded frame (a stage-2 decoder)."""
  vae_file = os.path.join(HERE, 'fixtures', 'vidtok', 'model.safetensors')
  c = testing_utils.tiny_tokenizer_config()
  c.model.latent_channels, c.model.latent_size, c.model.latent_frames = 16, (4, 6), 5
  c.model.decoder_attention, c.model.first_frame_prob = 'full', 0.5
  c.data.normalize = 'none'
  import vftok
  tok = api.Tokenizer.from_config(c)
  tok.vae = vftok.VidTok.load(vae_file)
  frames = np.random.default_rng(1).integers(0, 256, (1, 33, 32, 48, 3),
                                             dtype=np.uint8)
  tokens = tok.encode_video(frames)
  assert tokens.shape == (1, 9, c.model.tokens_per_frame)   # (33 - 1) / 4 + 1
  chunk0 = tok.tokenize(np.asarray(tok.vae.encode(frames[:, :17] / 127.5 - 1)))
  np.testing.assert_array_equal(tokens[:, :5], np.asarray(chunk0))
  video = tok.decode_video(tokens[:, :, :2], steps=2, guidance_scale=1.0)
  assert video.shape == frames.shape and video.dtype == np.uint8
