"""Learning tests: training provably learns (issue 27).

A small tokenizer and a small AR model are trained through the project's
own code path (training.tokenizer_task / ar_task, create_state, jit_step:
the real loss with nested dropout, FSQ, REPA, the flow time law and the real
optimizer) on procedural latent videos whose structure is known
(tests/procedural.py), then scored on a fixed held-out set through the
public API (vftok.Tokenizer, ar_sampling.sample). Each assertion has a
margin measured over seeds; tests/procedural.py's docstring describes the
data. What each test catches when the recipe breaks: docs/learning_tests.md.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procedural
import testing_utils
from vftok import api
from vftok import defaults
from vftok import flow
from vftok import sharding
from vftok import training
from vftok.evals import pixels
from vftok.evals import reconstruction
from vftok.models import ar_sampling
from vftok.models import repa as repa_lib
from vftok.models import tokenizer as tokenizer_lib
from vftok.models.pretrained import features

pytestmark = [pytest.mark.learning, pytest.mark.e2e]

TOKENIZER_STEPS = 3000
TOKENIZER_BATCH = 8
K = 4                   # tokens per latent frame (budgets 1, 2, 4)
HELDOUT = 128           # held-out clips
PEAK = 2.6              # PSNR peak: the latents' range (texture included)
DECODE = dict(steps=10, guidance_scale=1.0)  # sampled reconstructions
AR_BUDGET = 2           # AR tokens per latent frame
AR_STEPS = 1200
AR_BATCH = 64
AR_SAMPLES = 64         # sampled videos (16 per class)
AR_CFG = 2.0            # classifier-free guidance of the AR samples


# ---- training ------------------------------------------------------------------

def tokenizer_config(seed: int = 0, steps: int = TOKENIZER_STEPS):
  """The demo's small-model recipe (configs/demo.py: FSQ readout scale,
  flow-time law, position scale, encoder lr scale, lr), shrunk to the
  procedural latents: 5 x 8 x 8 x 4, [1, 2, 2] patches (16 per frame), K = 4,
  width 64, depth 2 + 2, MLP ratio 2 (the step's cost is mostly MLP at this
  width), 1000 FSQ codes. The REPA teacher is the procedural one (features
  precomputed per clip, as the demo's records carry I3D features)."""
  c = testing_utils.load_config('demo')
  m = c.model
  m.latent_frames, m.latent_size = procedural.FRAMES, (procedural.SIZE,) * 2
  m.latent_channels = procedural.CHANNELS
  m.patch_size = (1, 2, 2)
  m.tokens_per_frame = K
  m.enc_depth = m.dec_depth = 2
  m.enc_width = m.dec_width = 64
  m.head_dim = 32
  m.mlp_ratio = 2.0
  m.fsq_levels = (8, 5, 5, 5)
  m.repa_source, m.repa_dim = 'records', procedural.TEACHER_DIM
  # A fifth of the flow times uniform: the demo's law (mean 2) alone leaves
  # the low-noise end untrained and 10-step samples collapse after ~3000 steps.
  m.time_uniform = 0.2
  c.data.normalize = 'none'
  c.data.global_batch_size = TOKENIZER_BATCH
  c.optim.warmup_steps = 50
  c.train.total_steps = steps
  c.seed = seed
  return c


def one_device_mesh():
  # One device: 8 simulated CPU devices only add collectives on 2 cores.
  return sharding.data_mesh(jax.devices()[:1])


def train(task, config, next_batch):
  """config.train.total_steps steps of the jitted, state-donating train step
  (training.jit_step, as the jobs run it) -> (state, last metrics)."""
  mesh = one_device_mesh()
  state, shardings, rng = training.create_state(task, config.seed, mesh)
  step = training.jit_step(task, shardings, mesh, rng)
  metrics = None
  for _ in range(config.train.total_steps):
    state, metrics = step(state, next_batch())
  return state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_tokenizer(config, transform=None):
  """-> (vftok.Tokenizer with the trained params, last step's metrics).
  transform: optional batch -> batch (tests/learning_breaks.py's data bugs)."""
  gen = np.random.default_rng(config.seed)

  def next_batch():
    clips = procedural.sample_clips(gen, config.data.global_batch_size)
    batch = {'latents': clips['latents'],
             'repa_features': clips['repa_features']}
    return transform(batch) if transform else batch

  state, metrics = train(training.tokenizer_task(config), config, next_batch)
  return api.Tokenizer(config, state.params), metrics


# ---- evaluation ----------------------------------------------------------------

def psnr(recon, clips):
  return float(np.mean(pixels.psnr(np.asarray(recon), clips['latents'], PEAK)))


def layout_psnr(recon, clips):
  """PSNR of the low frequencies (procedural.smooth: the textures removed)."""
  return float(np.mean(pixels.psnr(procedural.smooth(recon),
                                   procedural.smooth(clips['latents']), PEAK)))


def edge_error(recon, clips):
  return float(np.mean(np.abs(procedural.edge_position(np.asarray(recon), clips)
                              - clips['edges'])))


def accuracy(latents, labels):
  return float(np.mean(procedural.classify_direction(np.asarray(latents))
                       == labels))


def repa_alignment(tok, clips, t_values=(0.3, 0.6, 0.9)):
  """Mean cosine between the REPA head's output and the teacher's features
  on held-out clips (decoder at flow times t_values, all K tokens), and the
  same for the best constant prediction (the teacher's mean feature)."""
  m = tok.config.model
  x = jnp.asarray(clips['latents'])
  target = features.to_grid(jnp.asarray(clips['repa_features']),
                            tokenizer_lib.grid_hw(m))
  model = tok.model
  codes, _ = model.apply(tok.params, x,
                         method=tokenizer_lib.VideoFlexTok.encode)
  b = x.shape[0]
  cos = []
  for i, t in enumerate(t_values):
    eps = jax.random.normal(jax.random.key(i), x.shape)
    tb = jnp.full((b,), t)
    _, hidden = model.apply(tok.params, codes, flow.add_noise(x, eps, tb), tb,
                            None, jnp.zeros((b,), bool),
                            method=tokenizer_lib.VideoFlexTok.decode)
    pred = model.apply(tok.params, hidden,
                       method=tokenizer_lib.VideoFlexTok.repa)
    cos.append(-float(repa_lib.cosine_loss(pred, target)))
  mean_feature = jnp.broadcast_to(target.mean(axis=(0, 1, 2)), target.shape)
  return float(np.mean(cos)), -float(repa_lib.cosine_loss(mean_feature,
                                                          target))


def evaluate_tokenizer(tok, clips):
  """Held-out metrics: PSNR (sampled and one-step mean) per budget, the
  model-free baselines, the layout at each budget, the REPA alignment."""
  x = clips['latents']
  baselines = reconstruction.baselines(x)
  out = {name: psnr(y, clips) for name, y in baselines.items()}
  out['layout clip mean colour'] = layout_psnr(baselines['clip mean colour'],
                                               clips)
  tokens = tok.tokenize(x)
  for k in tokenizer_lib.keep_budgets(K):
    sampled = np.asarray(tok.detokenize(tokens[:, :, :k], **DECODE))
    mean = np.asarray(tok.detokenize(tokens[:, :, :k], steps=1,
                                     guidance_scale=1.0))
    out[f'sampled {k}'] = psnr(sampled, clips)
    out[f'mean {k}'] = psnr(mean, clips)
    out[f'layout {k}'] = layout_psnr(mean, clips)
    out[f'edge error {k}'] = edge_error(mean, clips)
    out[f'class accuracy {k}'] = accuracy(sampled, clips['label'])
  out['repa alignment'], out['repa mean-feature alignment'] = repa_alignment(
      tok, clips)
  return out


# ---- the checks (tests/learning_breaks.py runs the same ones) ----------------

def _above(m, name, base, margin):
  """Asserts m[name] > m[base] + margin with a message naming both."""
  assert m[name] > m[base] + margin, (
      f'{name} {m[name]:.2f} is not {margin} above {base} {m[base]:.2f}')


def check_top_budget_far_above_baselines(m):
  _above(m, f'mean {K}', 'clip mean colour', 3.5)
  _above(m, f'mean {K}', '2x2 thumbnail', 0.5)
  _above(m, f'sampled {K}', 'clip mean colour', 2.5)


def check_psnr_rises_with_tokens(m):
  budgets = tokenizer_lib.keep_budgets(K)
  for small, large in zip(budgets, budgets[1:]):
    _above(m, f'mean {large}', f'mean {small}', 0.5)
    _above(m, f'sampled {large}', f'sampled {small}', 0.5)


def check_first_token_carries_the_layout(m):
  # Coarse to fine: one token per frame already carries the colours and the
  # shape's position (the low frequencies), far beyond the clip's mean colour.
  _above(m, 'layout 1', 'layout clip mean colour', 1.0)


def check_repa_head_aligns_with_the_teacher(m):
  _above(m, 'repa alignment', 'repa mean-feature alignment', 0.2)


TOKENIZER_CHECKS = (check_top_budget_far_above_baselines,
                    check_psnr_rises_with_tokens,
                    check_first_token_carries_the_layout,
                    check_repa_head_aligns_with_the_teacher)


# ---- the tokenizer's tests -----------------------------------------------------

@pytest.fixture(scope='module')
def heldout():
  return procedural.heldout(HELDOUT)


@pytest.fixture(scope='module')
def tokenizer_run(heldout):
  tok, metrics = train_tokenizer(tokenizer_config())
  assert np.isfinite(metrics['loss']), metrics
  return tok, evaluate_tokenizer(tok, heldout)


def test_procedural_readers_know_the_structure(heldout):
  # The model-free readers the checks score with are exact on the data.
  assert accuracy(heldout['latents'], heldout['label']) == 1.0
  assert edge_error(heldout['latents'], heldout) < 0.05


@pytest.mark.parametrize('check', TOKENIZER_CHECKS,
                         ids=lambda c: c.__name__[len('check_'):])
def test_tokenizer_learns(tokenizer_run, check):
  check(tokenizer_run[1])


# ---- the AR model --------------------------------------------------------------

def ar_config(vocab_size: int, seed: int = 0, steps: int = AR_STEPS):
  """A 2-block, width-64 class-conditional AR model over AR_BUDGET tokens
  per latent frame in time-first order (configs/ar_demo.py's recipe, small)."""
  c = defaults.ar_config(depth=2)
  m = c.model
  m.width, m.heads = 64, 2
  m.vocab_size = vocab_size
  m.num_frames, m.tokens_per_frame = procedural.FRAMES, AR_BUDGET
  m.seq_len = procedural.FRAMES * AR_BUDGET
  m.num_classes = procedural.NUM_CLASSES
  m.dropout, m.dtype, m.remat = 0.0, 'float32', 'none'
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 50
  c.data.global_batch_size = AR_BATCH
  c.train.total_steps = steps
  c.seed = seed
  return c


def train_ar(tok, seed: int = 0):
  """Trains on fresh clips each step, tokenized by `tok` (the first
  AR_BUDGET tokens per frame), with their class -> (tok, model, params)."""
  config = ar_config(int(np.prod(tok.config.model.fsq_levels)), seed)
  gen = np.random.default_rng(10_000 + seed)

  def next_batch():
    clips = procedural.sample_clips(gen, config.data.global_batch_size)
    tokens = np.asarray(tok.tokenize(clips['latents']))[:, :, :AR_BUDGET]
    return {'tokens': tokens, 'label': clips['label']}

  task = training.ar_task(config)
  state, metrics = train(task, config, next_batch)
  assert np.isfinite(metrics['loss']), metrics
  return tok, task.model, state.params['params']


def evaluate_ar(run, clips, seed: int = 0):
  """The class accuracy of AR samples (AR_SAMPLES, each class alike, sampled
  with classifier-free guidance AR_CFG), decoded
  with the one-step mean (the latents their tokens stand for), and of the
  tokenizer's own reconstructions of held-out clips at the AR's budget (the
  ceiling of what decoded samples can show)."""
  tok, model, params = run
  decode = dict(steps=1, guidance_scale=1.0)
  tokens = tok.tokenize(clips['latents'])[:, :, :AR_BUDGET]
  ceiling = accuracy(tok.detokenize(tokens, **decode), clips['label'])
  labels = np.arange(AR_SAMPLES) % procedural.NUM_CLASSES
  samples = ar_sampling.sample(
      model, params, jax.random.key(seed), num_frames=procedural.FRAMES,
      tokens_per_frame_budget=AR_BUDGET, class_labels=labels, cfg_scale=AR_CFG)
  latents = tok.detokenize(np.asarray(samples), seed=seed, **decode)
  return {'sample class accuracy': accuracy(latents, labels),
          'reconstruction class accuracy': ceiling}


def check_ar_samples_have_their_class(m):
  assert m['reconstruction class accuracy'] >= 0.95, (
      f"reconstructions' class accuracy {m['reconstruction class accuracy']}")
  assert m['sample class accuracy'] >= 0.9, (
      f"samples' class accuracy {m['sample class accuracy']:.3f} < 0.9 "
      f'(chance {1 / procedural.NUM_CLASSES})')


AR_CHECKS = (check_ar_samples_have_their_class,)


def test_ar_samples_have_their_class(tokenizer_run, heldout):
  check_ar_samples_have_their_class(
      evaluate_ar(train_ar(tokenizer_run[0]), heldout))
