"""Stage 2 (frozen encoder, full attention, first-frame conditioning), guided
sampling, streaming tokenization and long videos."""
import jax
import numpy as np
import pytest

import vftok
import testing_utils
from vftok import flow
from vftok.data import chunks
from vftok import sharding
from vftok import training


def stage2_config():
  c = testing_utils.tiny_tokenizer_config()
  c.model.decoder_attention = 'full'
  c.model.first_frame_prob = 0.5
  c.optim.freeze = ('encoder',)
  c.optim.weight_decay = 0.1   # would move the encoder if it were not frozen
  return c


def latents(b=8, t=3, seed=0):
  return np.random.default_rng(seed).normal(size=(b, t, 4, 4, 4)).astype(np.float32)


@pytest.mark.e2e  # a whole train step / pipeline
def test_stage2_keeps_every_encoder_parameter_bit_identical():
  c = stage2_config()
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:2])
  task = training.tokenizer_task(c)
  init_fn = task.init_fn
  state, shardings = sharding.create_sharded_state(init_fn, jax.random.key(0), mesh)
  before = jax.device_get(state.params)
  # No optimizer state (Adam moments) is allocated for the encoder.
  n_opt = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
  n_enc = sum(np.size(x) for x in jax.tree.leaves(before['params']['encoder']))
  n_all = sum(np.size(x) for x in jax.tree.leaves(before))
  assert n_opt < 2 * (n_all - n_enc) + 16
  step = jax.jit(training.make_step(task),
                 in_shardings=(shardings, sharding.batch_sharding(mesh),
                               sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  batch = {'latents': jax.device_put(latents(), sharding.batch_sharding(mesh))}
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(1))
  after = jax.device_get(state.params)
  assert np.isfinite(metrics['loss'])
  for a, b in zip(jax.tree.leaves(before['params']['encoder']),
                  jax.tree.leaves(after['params']['encoder'])):
    np.testing.assert_array_equal(a, b)
  moved = [np.any(a != b) for a, b in zip(jax.tree.leaves(before['params']['decoder']),
                                          jax.tree.leaves(after['params']['decoder']))]
  assert any(moved)


def test_freeze_rejects_unknown_module():
  c = stage2_config()
  c.optim.freeze = ('encodr',)
  with pytest.raises(ValueError, match='encodr'):
    training.tokenizer_task(c)


@pytest.fixture(scope='module')
def tok():
  c = stage2_config()
  return testing_utils.perturbed(vftok.Tokenizer.from_config(c, seed=0))


def test_first_frame_conditioning_reproduces_the_given_frame(tok):
  x = latents(2)
  tokens = tok.tokenize(x)
  out = np.asarray(tok.detokenize(tokens[:, :, :2], steps=3,
                                  first_frame=x[:, 0]))
  np.testing.assert_array_equal(out[:, 0], x[:, 0])
  free = np.asarray(tok.detokenize(tokens[:, :, :2], steps=3))
  assert not np.allclose(free[:, 1:], out[:, 1:])  # later frames see it
  with pytest.raises(ValueError, match='first_frame'):
    tok.detokenize(tokens, steps=2, first_frame=x[:1, 0])


def test_apg_reduces_to_cfg_and_projects_per_channel():
  rng = np.random.default_rng(0)
  v_c, v_u = rng.normal(size=(2, 2, 3, 4, 4, 5)).astype(np.float32)  # [B,T,H,W,C]
  zeros = np.zeros_like(v_c)
  out, _ = flow.apg_combine(v_c, v_u, zeros, flow.Guidance(3.0, 'apg', eta=1.0))
  np.testing.assert_allclose(out, v_u + 3.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)
  out0, _ = flow.apg_combine(v_c, v_u, zeros, flow.Guidance(3.0, 'apg', eta=0.0))
  # eta = 0 removes the update's part parallel to v_c, per clip and channel
  # over (T, H, W) (the release's per-channel video norm).
  upd = np.asarray(out0) - v_c
  np.testing.assert_allclose(np.sum(upd * v_c, axis=(1, 2, 3)), 0, atol=1e-3)
  assert np.abs(np.sum(upd * v_c, axis=(1, 2, 3, 4))).max() < 1e-2
  clipped, _ = flow.apg_combine(v_c, v_u, zeros, flow.Guidance(
      3.0, 'apg', eta=1.0, norm_threshold=0.5))
  norms = np.sqrt(np.sum(np.square(np.asarray(clipped) - v_c), axis=(1, 2, 3)))
  assert np.all(norms <= 2.0 * 0.5 + 1e-4)
  # Momentum: running = d + momentum * running, one buffer per clip.
  g = flow.Guidance(3.0, 'apg', eta=1.0, momentum=-0.5)
  _, buf = flow.apg_combine(v_c, v_u, zeros, g)
  out2, buf2 = flow.apg_combine(v_c, v_u, buf, g)
  np.testing.assert_allclose(buf2, 0.5 * (v_c - v_u), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out2, v_c + 2.0 * 0.5 * (v_c - v_u), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match='guidance kind'):
    flow.Guidance(2.0, 'pag')


def test_time_law_mixes_in_uniform_times():
  rng = jax.random.key(3)
  n = 20000
  base = np.asarray(flow.sample_time(rng, n, mean=2.0))
  # uniform_frac=0 is the plain logit-normal law, draw for draw.
  np.testing.assert_array_equal(
      np.asarray(flow.sample_time(rng, n, mean=2.0, uniform_frac=0.0)), base)
  mixed = np.asarray(flow.sample_time(rng, n, mean=2.0, uniform_frac=0.2))
  assert 0 < mixed.min() and mixed.max() < 1
  # Below t = 0.3 the logit-normal(2, 1) law has 0.2 % of its mass; a fifth
  # drawn uniformly adds 0.2 * 0.3 = 6 %.
  assert np.mean(base < 0.3) < 0.005
  assert 0.05 < np.mean(mixed < 0.3) < 0.07
  kept = np.mean(mixed == base)
  assert 0.78 < kept < 0.82


def test_detokenize_guidance_options(tok):
  tokens = tok.tokenize(latents(2))
  cfg = np.asarray(tok.detokenize(tokens, steps=3, guidance_scale=2.0,
                                  guidance='cfg'))
  apg_as_cfg = np.asarray(tok.detokenize(tokens, steps=3, guidance_scale=2.0,
                                         guidance='apg', apg_eta=1.0,
                                         apg_momentum=0.0, apg_norm_threshold=0.0))
  np.testing.assert_allclose(apg_as_cfg, cfg, atol=1e-4)
  apg = np.asarray(tok.detokenize(tokens, steps=3, guidance_scale=2.0,
                                  guidance='apg', apg_momentum=-0.5,
                                  apg_norm_threshold=1.0))
  assert np.all(np.isfinite(apg)) and not np.allclose(apg, cfg)
  shifted = np.asarray(tok.detokenize(tokens, steps=3, time_shift=3.0))
  assert not np.allclose(shifted, np.asarray(tok.detokenize(tokens, steps=3)))
  plain = np.asarray(tok.detokenize(tokens, steps=3, guidance_scale=1.0))
  assert not np.allclose(plain, np.asarray(tok.detokenize(tokens, steps=3)))  # APG default
  noise = np.random.default_rng(1).normal(size=plain.shape).astype(np.float32)
  a = tok.detokenize(tokens, steps=3, noise=noise)
  np.testing.assert_array_equal(a, tok.detokenize(tokens, steps=3, noise=noise,
                                                  seed=7))  # noise wins
  with pytest.raises(ValueError, match='noise must be'):
    tok.detokenize(tokens, steps=3, noise=noise[:1])


def test_guidance_in_one_pass_equals_two_passes(tok):
  """config.sample.guidance_passes: one forward of 2B clips or two of B give
  the same samples (CFG, APG with momentum, first-frame conditioning, per-frame
  budgets); an unknown value is one error."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  x = latents(2)
  tokens = np.asarray(tok.tokenize(x))
  runs = {}
  for passes in ('one', 'two'):
    c = ml_collections.ConfigDict(tok.config.to_dict())
    c.sample.guidance_passes = passes
    t = vftok.Tokenizer(c, tok.params)
    runs[passes] = [np.asarray(out) for out in (
        t.detokenize(tokens, steps=3, guidance_scale=2.0, guidance='cfg'),
        t.detokenize(tokens, steps=3, guidance_scale=3.0, guidance='apg',
                     apg_momentum=-0.5, apg_norm_threshold=1.0),
        t.detokenize(tokens[:, :, :2], steps=3, first_frame=x[:, 0]),
        t.detokenize(tokens, steps=3, budgets=np.array([[1, 2, 4], [4, 4, 1]])),
    )]
  for one, two in zip(runs['one'], runs['two']):
    np.testing.assert_allclose(one, two, atol=1e-4, rtol=1e-4)  # seen 2e-5
  c = ml_collections.ConfigDict(tok.config.to_dict())
  c.sample.guidance_passes = 'three'
  with pytest.raises(ValueError, match='guidance_passes'):
    vftok.Tokenizer(c, tok.params).detokenize(tokens, steps=2)


def test_streaming_tokens_equal_batch_tokens():
  c = testing_utils.tiny_tokenizer_config()
  t = vftok.Tokenizer.from_config(c, seed=3)
  x = latents(2, 5, seed=1)
  want = np.asarray(t.tokenize(x))
  with pytest.raises(ValueError, match='at most 5 latent frames'):
    t.stream(batch=2, max_frames=8)
  stream = t.stream(batch=2)
  got = np.stack([np.asarray(stream.push(x[:, i])) for i in range(5)], axis=1)
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='push takes'):
    stream.push(x[:1, 0])
  full = t.stream(batch=2, max_frames=1)
  full.push(x[:, 0])
  with pytest.raises(ValueError, match='stream is full'):
    full.push(x[:, 1])


@pytest.mark.parametrize('frames, spans', [
    (17, [(0, 17)]),
    (33, [(0, 17), (16, 33)]),
    (81, [(0, 17), (16, 33), (32, 49), (48, 65), (64, 81)]),
    (21, [(0, 17), (16, 21)]),
])
def test_chunk_spans(frames, spans):
  assert chunks.chunk_spans(frames) == spans
  clip = np.arange(frames)[None, :, None, None, None]
  assert np.array_equal(chunks.stitch_frames(chunks.split_frames(clip)), clip)


@pytest.mark.parametrize('frames', [16, 18, 80])
def test_chunk_spans_reject_bad_lengths(frames):
  with pytest.raises(ValueError, match='4 n \\+ 1'):
    chunks.chunk_spans(frames)


def test_long_video_round_trip_keeps_frames_and_chunk_boundaries():
  c = stage2_config()
  c.model.latent_frames = 5
  t = testing_utils.perturbed(vftok.Tokenizer.from_config(c, seed=0))
  rng = np.random.default_rng(0)
  # An 81-frame video = 5 chunks of 5 latent frames (a stand-in VAE here: each
  # chunk's latents are random, the frame count is what is checked).
  chunk_lat = [rng.normal(size=(1, 5, 4, 4, 4)).astype(np.float32) for _ in range(5)]
  tokens = t.tokenize_long(chunk_lat)
  assert tokens.shape == (1, 21, c.model.tokens_per_frame)   # (81 - 1) / 4 + 1
  np.testing.assert_array_equal(tokens[:, 5:9], np.asarray(t.tokenize(chunk_lat[1]))[:, 1:])
  seen = []

  def reencode(prev):
    seen.append(np.asarray(prev))
    return np.asarray(prev)[:, -1:] * 0.5
  chunks = t.detokenize_long(tokens[:, :, :2], reencode, steps=2)
  assert [ch.shape[1] for ch in chunks] == [5] * 5
  for i in range(1, 5):
    # Chunk i starts exactly at the frame handed over from chunk i - 1.
    np.testing.assert_array_equal(chunks[i][:, 0], seen[i - 1][:, -1] * 0.5)
    np.testing.assert_array_equal(seen[i - 1], chunks[i - 1])
  with pytest.raises(ValueError, match='latent frames'):
    t.tokenize_long([chunk_lat[0][:, :3]] + chunk_lat[1:])


def test_generator_decodes_a_long_sample_chunk_by_chunk(tmp_path):
  """generator.Decoder on 9 latent frames (33 pixel frames, more than the
  tokenizer's one clip of 5): chunk 0 is the one-clip decode, the rest is
  decoded conditioned on it and stitched at the shared frame."""
  from vftok.api import generator  # pylint: disable=g-import-not-at-top
  from vftok.data import codecs  # pylint: disable=g-import-not-at-top
  from vftok.data import pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  codec = codecs.PatchPCACodec().fit(
      [rng.integers(0, 256, (2, 17, 32, 32, 3)).astype(np.uint8)])
  codec.save(str(tmp_path / 'codec.npz'))
  data = pipeline.Data('', '', {}, codecs.PatchPCACodec.name,
                       str(tmp_path / 'codec.npz'), 'none')
  c = stage2_config()
  c.model.latent_frames, c.model.latent_channels = 5, codecs.CHANNELS
  t = testing_utils.perturbed(vftok.Tokenizer.from_config(c, seed=0))
  lat = rng.normal(size=(1, 5, 4, 4, codecs.CHANNELS)).astype(np.float32)
  tokens = t.tokenize_long([lat, lat])[:, :, :2]
  assert tokens.shape == (1, 9, 2)
  decoder = generator.Decoder(t, data, steps=2)
  video = decoder(tokens)
  assert video.shape == (1, 33, 32, 32, 3) and video.dtype == np.uint8
  np.testing.assert_array_equal(video[:, :17], decoder(tokens[:, :5]))
  plain = testing_utils.tiny_tokenizer_config()   # no frame conditioning
  plain.model.latent_frames, plain.model.latent_channels = 5, codecs.CHANNELS
  with pytest.raises(ValueError, match='frame conditioning'):
    generator.Decoder(vftok.Tokenizer.from_config(plain), data, steps=1)(
        tokens)
