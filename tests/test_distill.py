"""Few-step decoder distillation (models/distill.py): the teacher trajectory
the targets come from, the student's start, that it learns the teacher's
guided sampler, and the API of a distilled tokenizer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import testing_utils
import vftok
from vftok import defaults
from vftok import flow
from vftok.models import decoder as decoder_lib
from vftok.models import distill

TEACHER_STEPS = 8
PERTURB = 0.1
LR, STEPS = 3e-3, 400
SEED = 0
GUIDANCE = dict(guidance='apg', guidance_scale=8.0, apg_momentum=-0.5,
                apg_eta=0.0, apg_norm_threshold=0.0)


def teacher_tok(seed=0):
  c = testing_utils.tiny_tokenizer_config()
  c.sample.steps = TEACHER_STEPS
  c.sample.time_shift = 1.0
  for k, v in GUIDANCE.items():
    c.sample[k] = v
  # Offsets on every parameter: a fresh adaLN-Zero decoder outputs 0, a
  # perturbed one a curved, condition-dependent flow.
  return testing_utils.perturbed(vftok.Tokenizer.from_config(c, seed), PERTURB,
                                 seed)


def student_of(teacher, student_steps=(1, 2)):
  c = defaults.distill_decoder(teacher.config.copy_and_resolve_references(),
                               '/nonexistent/teacher', student_steps,
                               max(student_steps))
  params = jax.tree.map(jnp.asarray, teacher.params)
  width = c.model.dec_width
  params['params']['decoder']['step_embed'] = jnp.zeros(
      (decoder_lib.STEP_LEVELS, width))
  return vftok.Tokenizer(c, params)


def latents(b, seed):
  return np.random.default_rng(seed).normal(size=(b, 3, 4, 4, 4)).astype(
      np.float32)


def test_the_trajectory_is_the_samplers_path():
  """euler_trajectory's states at any times lie on euler_sample's Euler path
  (APG with momentum: the buffer runs along), at 0 its output, at 1 the
  noise. Reference: a plain Python loop of the same steps."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 4)).astype(np.float32)
  velocity = lambda x, t, null: (jnp.tanh(x @ w) * (1 + t[:, None, None, None, None])
                                 - (0.0 if null is None else
                                    null[:, None, None, None, None] * x))
  noise = jnp.asarray(rng.normal(size=(2, 3, 2, 2, 4)), jnp.float32)
  g = flow.Guidance(3.0, 'apg', momentum=-0.5)
  times = jnp.asarray([1.0, 0.75, 0.5, 0.3, 0.0])
  for steps, shift in ((8, 1.0), (5, 3.0)):
    states = flow.euler_trajectory(velocity, noise, steps, g, shift, times,
                                   one_pass=False)
    ts = np.asarray(flow.time_grid(steps, shift))
    x, buf, path = noise, jnp.zeros_like(noise), []
    for i in range(steps):
      tb = jnp.full((2,), ts[i])
      v, buf = flow.guide(velocity(x, tb, None),
                          velocity(x, tb, jnp.ones((2,), bool)), buf, g)
      path.append((ts[i], ts[i + 1], x, v))
      x = x + (ts[i + 1] - ts[i]) * v
    for j, tau in enumerate(np.asarray(times)):
      if tau == 0:
        want = x
      else:
        t0, _, x0, v0 = next(p for p in path if p[1] < tau <= p[0])
        want = x0 + (tau - t0) * v0
      np.testing.assert_allclose(states[j], want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        states[-1], flow.euler_sample(velocity, noise, steps, g, shift,
                                      one_pass=False), atol=1e-6)
    np.testing.assert_array_equal(states[0], noise)


def test_a_fresh_student_is_its_teacher():
  """The step table starts at zero: at every step count the student's
  unguided sampler is exactly the teacher's."""
  teacher = teacher_tok()
  student = student_of(teacher)
  x = latents(2, 1)
  tokens = teacher.tokenize(x)
  np.testing.assert_array_equal(student.tokenize(x), tokens)
  for s in (1, 2):
    np.testing.assert_allclose(
        student.detokenize(tokens, steps=s, seed=3),
        teacher.detokenize(tokens, steps=s, guidance_scale=1.0, seed=3),
        atol=1e-6)


def test_student_api_errors_and_defaults():
  teacher = teacher_tok()
  student = student_of(teacher, (1, 2, 4))
  tokens = student.tokenize(latents(1, 0))
  assert student.sample_defaults()['steps'] == 4
  assert student.sample_defaults()['guidance_scale'] == 1.0
  assert student.detokenize(tokens).shape == (1, 3, 4, 4, 4)
  with pytest.raises(ValueError, match=r'trained for \(1, 2, 4\) steps'):
    student.detokenize(tokens, steps=3)
  with pytest.raises(ValueError, match='distilled in'):
    student.detokenize(tokens, guidance_scale=3.0)
  with pytest.raises(ValueError, match='train.init_from'):
    student.detokenize(tokens, sampler='teacher')  # its teacher is gone
  with pytest.raises(ValueError, match='not a distilled student'):
    teacher.detokenize(tokens, sampler='student')
  with pytest.raises(ValueError, match="choose 'student' or 'teacher'"):
    student.detokenize(tokens, sampler='fast')
  with pytest.raises(ValueError, match='powers of 2'):
    distill.student_pairs((1, 3))


@pytest.mark.learning
def test_the_student_learns_the_guided_teacher_in_few_steps():
  """Distilled for 400 steps on random latents, the 1- and 2-step students
  land near the teacher's 8-step APG sample (momentum included): much nearer
  than the teacher's own 1- and 2-step samplers or the fresh student, and
  nearer than the teacher's unguided sampler. Measured at seed 0: 0.116 /
  0.115 against 0.53 / 0.41 fresh, 0.98 / 0.83 naive, 0.296 unguided; with
  unguided targets (a broken recipe) the students end at 0.306 and the test
  fails. Passed at seeds 0, 1, 2."""
  teacher = teacher_tok(SEED)
  student = student_of(teacher, (1, 2))
  config = student.config
  model_t, model_s = teacher.model, student.model
  teacher_params = distill.teacher_decoder_params(teacher.params)
  loss = lambda p, batch, rng: distill.loss_fn(model_s, model_t, p,
                                               teacher_params, batch, rng,
                                               config)
  tx = optax.adam(LR)

  @jax.jit
  def step(params, opt, batch, rng):
    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
        params, batch, rng)
    # Only the decoder learns (the stage freezes the encoder and REPA head).
    grads = {'params': {k: (v if k == 'decoder' else
                            jax.tree.map(jnp.zeros_like, v))
                        for k, v in grads['params'].items()}}
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, metrics

  held = latents(16, 99)
  tokens = teacher.tokenize(held)
  noise = teacher.clip_noise(np.arange(16), seed=5)
  ref = teacher.detokenize(tokens, noise=noise, steps=TEACHER_STEPS,
                           **GUIDANCE)
  err = lambda out: float(jnp.mean(jnp.square(out - ref)))

  def student_err(s):
    return err(student.detokenize(tokens, steps=s, noise=noise))

  fresh = {s: student_err(s) for s in (1, 2)}
  naive = {s: err(teacher.detokenize(tokens, noise=noise, steps=s,
                                     **GUIDANCE)) for s in (1, 2)}
  params, opt = student.params, tx.init(student.params)
  for i in range(STEPS):
    batch = {'latents': jnp.asarray(latents(8, i))}
    params, opt, metrics = step(params, opt, batch,
                                jax.random.key(1000 * SEED + i))
  student.params = params
  after = {s: student_err(s) for s in (1, 2)}
  # The guidance is learnt, not only the few steps: the students are nearer
  # the guided sample than the teacher's own unguided sampler is.
  guidance_effect = err(teacher.detokenize(tokens, noise=noise,
                                           steps=TEACHER_STEPS,
                                           guidance_scale=1.0))
  for s in (1, 2):
    assert after[s] < 0.35 * min(fresh[s], naive[s]), (s, after, fresh, naive)
    assert after[s] < 0.5 * guidance_effect, (s, after, guidance_effect)
