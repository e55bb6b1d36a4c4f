"""REPA teachers: precomputed record features, I3D key frames, DINOv2, and
the train step with a teacher whose weights are passed as an argument."""
import jax
import numpy as np
import pytest

import testing_utils
from vftok import sharding
from vftok import training
from vftok.data import pipeline
from vftok.data import records
from vftok.models.pretrained import features


def test_records_source_resizes_to_the_decoder_grid():
  c = testing_utils.tiny_tokenizer_config()          # 4 x 4 latent grid
  c.model.repa_source, c.model.repa_dim = 'records', 5
  teacher = features.get(c.model)
  const = np.full((2, 3, 2, 2, 5), 0.7, np.float32)
  out = np.asarray(teacher({'repa_features': const}))
  assert out.shape == (2, 3, 16, 5)
  np.testing.assert_allclose(out, 0.7, rtol=1e-5)
  # Shrinking by whole factors: each decoder patch gets its block's mean.
  fine = np.random.default_rng(0).normal(size=(2, 3, 8, 8, 5)).astype(np.float32)
  block = fine.reshape(2, 3, 4, 2, 4, 2, 5).mean(axis=(3, 5)).reshape(2, 3, 16, 5)
  np.testing.assert_allclose(np.asarray(teacher({'repa_features': fine})),
                             block, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='repa_dim'):
    teacher({'repa_features': const[..., :4]})
  with pytest.raises(ValueError, match='no repa_features'):
    teacher({'latents': const})


def test_i3d_keyframes_on_the_fly_equals_the_demo_precomputation():
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (2, 9, 32, 32, 3), dtype=np.uint8)
  stored = features.demo_teacher('i3d:Mixed_3c')(clips)     # [2, 3, 2, 2, 480]
  assert stored.shape == (2, 3, 2, 2, 480) and stored.dtype == np.float16
  c = testing_utils.tiny_tokenizer_config()
  c.model.latent_size = (4, 4)
  c.model.repa_source, c.model.repa_dim = 'i3d_keyframes', 480
  c.model.repa_teacher_layer = 'Mixed_3c'
  teacher = features.get(c.model)
  # Pool 2 x 2 on the fly too: compare on a 2 x 2 decoder grid.
  c2 = c.copy_and_resolve_references()
  c2.model.patch_size = (1, 2, 2)
  live = np.asarray(features.get(c2.model)(
      {'repa_frames': features.key_frames(clips)}))
  np.testing.assert_allclose(live.reshape(stored.shape), stored.astype(np.float32),
                             rtol=2e-2, atol=2e-2)
  assert np.asarray(teacher({'repa_frames': features.key_frames(clips)})).shape == (2, 3, 16, 480)
  # Different content -> different features (a real network, not a constant).
  assert not np.allclose(stored[0], stored[1])
  with pytest.raises(ValueError, match='endpoint|must be one of'):
    features.i3d_keyframe_fn('Mixed_9z')


def test_i3d_still_network_equals_the_3d_network_on_single_frames():
  """The key-frame teacher's 2-D network (centre temporal taps) is the 3-D
  I3D on a 1-frame clip, through the temporal pools of Mixed_4b too."""
  from vftok.models.pretrained import i3d  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 1, 48, 48, 3)).astype(np.float32)
  variables = i3d.load_variables()
  for layer in ('Mixed_3c', 'Mixed_4b'):
    full = i3d.InceptionI3d(layer=layer).apply(variables, x)
    still = i3d.InceptionI3d(layer=layer, still=True).apply(
        i3d.still_variables(variables), x)
    assert still.shape == full.shape
    np.testing.assert_allclose(np.asarray(still), np.asarray(full),
                               rtol=1e-4, atol=1e-4 * float(np.abs(full).max()))
  assert i3d.still_variables(variables)['params']['Conv3d_1a_7x7']['Conv_0'][
      'kernel'].shape[0] == 1
  with pytest.raises(ValueError, match='single frames'):
    i3d.InceptionI3d(layer='Mixed_3c', still=True).apply(
        i3d.still_variables(variables), np.zeros((1, 2, 32, 32, 3), np.float32))


def test_key_frames_in_batches(tmp_path):
  rng = np.random.default_rng(0)
  exs = [dict(latents=rng.normal(size=(3, 2, 2, 16)).astype(np.float16),
              frames=rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8),
              label=i, caption='c', source=f'v:{i}') for i in range(4)]
  path = str(tmp_path / 'train-00000-of-00001.array_record')
  records.write_records(path, exs)
  prep = pipeline.Prepare(pipeline.TRAIN_FIELDS + ('repa_frames',))
  out = prep.map(records.serialize(exs[1]))
  np.testing.assert_array_equal(out['repa_frames'], exs[1]['frames'][::4])
  assert out['repa_frames'].shape == (3, 16, 16, 3)


@pytest.mark.e2e  # a whole train step / pipeline
def test_train_step_with_a_dinov2_teacher(tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  transformers.Dinov2Model(transformers.Dinov2Config(
      image_size=28, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      patch_size=14)).eval().save_pretrained(str(tmp_path / 'dino'),
                                             safe_serialization=True)
  c = testing_utils.tiny_tokenizer_config()
  c.model.repa_source, c.model.repa_dim = 'dinov2', 32
  c.model.repa_teacher_path = str(tmp_path / 'dino')
  assert features.needs_frames(c.model)
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:2])
  task = training.tokenizer_task(c)
  state, shardings = sharding.create_sharded_state(
      task.init_fn, jax.random.key(0), mesh)
  step_fn = training.make_step(task)
  assert task.extra[0] is not None
  rep = sharding.replicated(mesh)
  step = jax.jit(step_fn, in_shardings=(shardings, sharding.batch_sharding(mesh),
                                        rep, rep))
  rng = np.random.default_rng(0)
  batch = {'latents': rng.normal(size=(2, 3, 4, 4, 4)).astype(np.float32),
           'repa_frames': rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)}
  state, metrics = step(state, batch, jax.random.key(1),
                        jax.device_put(task.extra[0], rep))
  assert np.isfinite(float(metrics['loss_repa']))
  assert -1.0 <= float(metrics['loss_repa']) <= 1.0
  c.model.repa_teacher_path = ''
  with pytest.raises(ValueError, match='repa_teacher_path'):
    features.get(c.model)
