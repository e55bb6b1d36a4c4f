"""The footage set (data/footage.py) and reading clips spread over a video.

The footage set trains the shipped small tokenizer; what matters is that its
clips are deterministic, that no training clip comes from a held-out source
(the eval table must measure footage the model never saw), and that the
build writes a complete set. The shipped bundle's own check is in
test_pretrained_small64.py.
"""
import os

import numpy as np
import pytest

from vftok import errors
from vftok.data import demo
from vftok.data import footage
from vftok.data import records
from vftok.data import video_io


@pytest.fixture(scope='module')
def sources():
  return footage._load_sources(32)[0]


def test_clips_are_deterministic_and_move(sources):
  build = dict(seed=0, train_clips=30)
  train, evals = footage._specs(build, sources)
  assert {s[0] for s in train} == {'video', 'camera', 'objects'}
  for spec in [next(s for s in train if s[0] == k)
               for k in ('video', 'camera', 'objects')] + evals[:1] + evals[-1:]:
    a = footage.render(sources, spec, 9, 32)
    assert a.shape == (9, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, footage.render(sources, spec, 9, 32))
    # Something changes over time (camera, objects or the video itself).
    assert np.abs(a[-1].astype(int) - a[0]).mean() > 0.5, spec


def test_held_out_sources_never_train(sources):
  train, evals = footage._specs(dict(seed=3, train_clips=500), sources)
  assert {s[0] for s in evals} == {'held_video', 'held_camera'}
  assert {s[0] for s in train}.isdisjoint({'held_video', 'held_camera'})
  names = {f for f, _ in footage.VIDEOS} | {f for _, f in footage.STILLS}
  held = ({f for f, _ in footage.HELD_OUT_VIDEOS}
          | {f for _, f in footage.HELD_OUT_STILLS})
  assert names.isdisjoint(held)
  # Training renderers index only the training pools.
  assert len(sources['videos']) == len(footage.VIDEOS)
  assert len(sources['stills']) == len(footage.STILLS)


def test_build_writes_a_complete_set(tmp_path):
  p = footage.ensure_footage_dataset(str(tmp_path / 'f'), 9, 32,
                                     train_clips=40, clips_per_shard=16,
                                     repa_teacher='')
  m = p.manifest
  assert m['counts'] == dict(train=40, eval=32)
  assert m['latent_shape'] == [3, 4, 4, 16]
  evals = list(records.read_records(p.eval_pattern))
  assert len(evals) == 32
  assert all(e['source'].startswith(('held_video:bikes.mp4',
                                     'held_camera:coffee.png',
                                     'held_camera:flower.jpg')) for e in evals)
  # Same arguments: found, not rebuilt; other clip shape: one clear error.
  assert footage.ensure_footage_dataset(
      str(tmp_path / 'f'), 9, 32, train_clips=40, clips_per_shard=16,
      repa_teacher='').manifest == m
  with pytest.raises(ValueError, match='was built with'):
    footage.ensure_footage_dataset(str(tmp_path / 'f'), 17, 32,
                                   repa_teacher='')


def test_spread_clips_seek_over_the_whole_video(tmp_path):
  path = os.path.join(demo.video_dir(), 'bikes.mp4')
  params = video_io.ClipParams(num_frames=9, resolution=32)
  clips, starts = video_io.spread_clips(path, 3, params)
  assert clips.shape == (3, 9, 32, 32, 3)
  assert starts[0] == 0 and 4 < starts[1] < 6 and 9 < starts[2] < 10.4
  # The clip read by seeking is the one read by decoding from the start.
  inputs = [video_io.VideoInput(path, 'bikes')]
  ref, _ = video_io.read_clips(inputs, video_io.ClipParams(
      num_frames=9, resolution=32, stride=1, max_clips_per_video=1))
  np.testing.assert_array_equal(clips[0], ref[0].frames)
  with pytest.raises(errors.InputError, match='no such file'):
    video_io.spread_clips(str(tmp_path / 'x.mp4'), 2, params)
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'not a video' * 100)
  with pytest.raises(errors.InputError, match='not a readable video'):
    video_io.spread_clips(str(bad), 2, params)
