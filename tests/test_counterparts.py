"""The paper's controlled counterparts in the same model code: the 3D-grid
tokenizer (one token per latent patch, no nested dropout; Figs. 6, 7, 11)
and the flat-1D encoder (registers see every frame; Table 2)."""
import numpy as np
import pytest

import vftok
from vftok import defaults
from vftok import errors
from vftok.models import masks
from vftok.models import token_order
from vftok.models import tokenizer as tokenizer_lib

from testing_utils import load_config


def small(config):
  m = config.model
  m.enc_depth = m.dec_depth = 1
  m.enc_width = m.dec_width = 32
  m.head_dim = 16
  m.repa_dim = 8
  return config


def latents(config, seed=0, batch=2):
  m = config.model
  return np.random.default_rng(seed).normal(
      size=(batch, m.latent_frames, *m.latent_size, m.latent_channels)
  ).astype(np.float32)


def test_grid_tokenizer_has_one_token_per_latent_patch_and_all_budgets_only():
  c = small(load_config('demo', 'grid'))
  assert c.model.tokens_per_frame == 16       # 8 x 8 latents, 2 x 2 patches
  assert tokenizer_lib.budgets(c.model) == [16]
  tok = vftok.Tokenizer.from_config(c)
  assert 'registers' not in tok.params['params']['encoder']
  x = latents(c)
  tokens = np.asarray(tok.tokenize(x))
  assert tokens.shape == (2, 5, 16)
  out = tok.detokenize(tokens, steps=2, guidance_scale=1.0)
  assert out.shape == x.shape and np.all(np.isfinite(out))
  with pytest.raises(ValueError, match='grid tokenizer decodes all its 16'):
    tok.detokenize(tokens[:, :, :4], steps=2)


def test_one_budget_rule_for_every_job():
  """tokenizer.check_budgets: the budgets eval_tokenizer, eval_ar and
  reconstruct evaluate, and the rule detokenize applies to one k."""
  flex, grid = load_config('demo').model, load_config('demo', 'grid').model
  assert tokenizer_lib.check_budgets(flex) == [1, 2, 4, 8, 16]
  assert tokenizer_lib.check_budgets(flex, (8, 2, 8)) == [2, 8]
  assert tokenizer_lib.check_budgets(flex, limit=4) == [1, 2, 4]  # AR's K
  assert tokenizer_lib.check_budgets(grid) == [16]
  for model, requested, limit, match in (
      (flex, (0,), None, r'0 tokens .* outside \[1, 16\]'),
      (flex, (8,), 4, r'8 tokens .* outside \[1, 4\]'),
      (grid, (4,), None, 'grid tokenizer decodes all its 16'),
      (grid, (), 8, r'budgets \[16\] is within \[1, 8\]')):
    with pytest.raises(errors.InputError, match=match):
      tokenizer_lib.check_budgets(model, requested, limit, field='budgets')
  assert tokenizer_lib.budget_error(flex, 3) is None   # any k, not just 2^i


def test_grid_tokens_are_local_and_time_causal():
  """Token (t, i) reads the whole clip up to frame t: changing the last
  frame leaves earlier frames' tokens as they were."""
  c = small(load_config('demo', 'grid'))
  tok = vftok.Tokenizer.from_config(c)
  x = latents(c)
  y = x.copy()
  y[:, -1] += 3.0
  a, b = np.asarray(tok.tokenize(x)), np.asarray(tok.tokenize(y))
  np.testing.assert_array_equal(a[:, :-1], b[:, :-1])
  assert (a[:, -1] != b[:, -1]).any()


@pytest.mark.parametrize('variant,earlier_change', [('', False),
                                                    ('flat1d', True)])
def test_flat_1d_tokens_depend_on_later_frames_videoflextok_tokens_do_not(
    variant, earlier_change):
  c = small(load_config('demo', variant))
  tok = vftok.Tokenizer.from_config(c)
  x = latents(c)
  y = x.copy()
  y[:, -1] += 3.0
  encode = lambda v: tok.model.apply(
      tok.params, v, method=tokenizer_lib.VideoFlexTok.encode)[1]
  za, zb = np.asarray(encode(x)), np.asarray(encode(y))
  change = np.abs(za[:, :-1] - zb[:, :-1]).max()
  if earlier_change:
    assert change > 1e-3
    ta, tb = np.asarray(tok.tokenize(x)), np.asarray(tok.tokenize(y))
    assert (ta[:, 0] != tb[:, 0]).any()
  else:
    assert change == 0.0


def test_flat_1d_mask_is_the_time_causal_mask_without_time():
  lay = masks.interleaved(3, 4, 2, registers_first=False)
  causal = masks.encoder_mask(lay, lay)
  full = masks.encoder_mask(lay, lay, 'full')
  assert (full | causal).sum() == full.sum()         # full contains causal
  later = lay.frame[None, :] > lay.frame[:, None]
  assert full[later].any() and not causal[later].any()
  # Within a frame the register order stays causal: register 0 does not
  # see its frame's register 1.
  same = lay.frame[:, None] == lay.frame[None, :]
  reg0_sees_reg1 = (lay.register[:, None] == 0) & (lay.register[None, :] == 1)
  assert not full[same & reg0_sees_reg1].any()
  np.testing.assert_array_equal(full[same], causal[same])
  with pytest.raises(ValueError, match='encoder attention'):
    masks.encoder_mask(lay, lay, 'bidirectional')


def test_flat_1d_refuses_paths_that_need_time_causal_tokens():
  c = small(load_config('demo', 'flat1d'))
  tok = vftok.Tokenizer.from_config(c)
  with pytest.raises(ValueError, match='streaming needs time-causal tokens'):
    tok.stream()
  with pytest.raises(ValueError, match='long video needs time-causal'):
    tok.tokenize_long([latents(c)])
  with pytest.raises(ValueError, match='long video needs time-causal'):
    tok.detokenize_long(np.zeros((1, 9, 16), np.int32), lambda x: x)
  stage2 = defaults.decoder_finetune(small(load_config('demo', 'flat1d')))
  with pytest.raises(errors.InputError, match='needs time-causal tokens'):
    tokenizer_lib.build(stage2.model)


def test_flat_1d_stage2_is_refused_at_startup_with_nothing_written(tmp_path):
  from vftok import main  # pylint: disable=g-import-not-at-top
  from vftok.jobs import train_tokenizer  # pylint: disable=g-import-not-at-top
  c = defaults.decoder_finetune(small(load_config('demo', 'flat1d')),
                                init_from=str(tmp_path / 'stage1'))
  with pytest.raises(SystemExit) as e:
    main.run_job(train_tokenizer, c, str(tmp_path / 'work'))
  assert str(e.value.code).startswith(
      "FATAL config.model.encoder_attention='full'")
  assert not (tmp_path / 'work').exists()


@pytest.mark.parametrize('field,value,match', [
    ('tokens_per_frame', 8, 'one token per latent patch, 4 x 4 = 16'),
    ('nested_dropout', 'pow2', "nested_dropout='pow2'"),
    ('token_structure', 'hexagons', "token_structure='hexagons'"),
])
def test_contradictory_grid_configs_are_refused(field, value, match):
  c = small(load_config('demo', 'grid'))
  c.model[field] = value
  with pytest.raises(errors.InputError, match=match):
    vftok.Tokenizer.from_config(c)


def test_raster_order_is_frame_by_frame_row_by_row_and_round_trips():
  t, h, w = 3, 2, 4
  grid = np.arange(t * h * w).reshape(1, t, h * w) + 100  # tokens [B, T, h*w]
  seq = token_order.to_sequence(grid, 'raster')
  # Raster scan of the [T, h, w] grid: frame, then row, then column.
  np.testing.assert_array_equal(seq[0], grid.reshape(t, h, w).reshape(-1))
  np.testing.assert_array_equal(
      token_order.from_sequence(seq, t, h * w, 'raster'), grid)
  frame, token = token_order.positions(t, h * w, 'raster')
  np.testing.assert_array_equal(frame, np.repeat(np.arange(t), h * w))
  np.testing.assert_array_equal(token, np.tile(np.arange(h * w), t))


def test_grid_ar_configs_generate_in_raster_order_at_one_length():
  for name, arg, k in (('ar_c2v_k600', '36,grid', 256),
                       ('ar_t2v_panda', '42,grid', 256),
                       ('ar_demo', 'grid', 16)):
    c = load_config(name, arg)
    assert c.order == 'raster' and tuple(c.eval.budgets) == (k,)
    assert c.model.tokens_per_frame == k
  assert load_config('tokenizer_k600', 'grid').model.tokens_per_frame == 256
  assert load_config('tokenizer_panda', 'grid').model.tokens_per_frame == 256


def test_grid_counterpart_differs_only_by_the_encoder_register_table():
  """tokenizer.param_count (printed by bench_train_step beside VideoFlexTok's):
  the grid model lacks exactly the [max_frames, K, width] register table."""
  flex = load_config('demo').model
  grid = load_config('demo', 'grid').model
  assert grid.tokens_per_frame == flex.tokens_per_frame
  missing = flex.max_frames * flex.tokens_per_frame * flex.enc_width
  assert (tokenizer_lib.param_count(flex) - tokenizer_lib.param_count(grid)
          == missing)
