"""The pluggable scores whose weights the user supplies (evals/frame_scores.py):
rFID's per-frame features and the ViCLIP text-video score. Their factories
load like the classifier's; a missing factory or weights path is one
errors.InputError naming the field. (The rFID column of the sweep runs in
tests/test_eval_tokenizer.py with a plug-in factory.)"""
import numpy as np
import pytest

from vftok import errors
from vftok.evals import frame_scores

PLUGIN = '''
import numpy as np
def scorer(path):
  def score(videos, captions):   # longer caption, brighter video: a match
    v = np.asarray(videos, np.float32).mean(axis=(1, 2, 3, 4)) / 255
    return np.asarray([1 - abs(x - len(c) / 10) for x, c in zip(v, captions)])
  return score
def not_callable(path):
  return 3
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
  (tmp_path / 'viclip_plugin.py').write_text(PLUGIN)
  monkeypatch.syspath_prepend(str(tmp_path))
  weights = tmp_path / 'weights.bin'
  weights.write_bytes(b'')
  return str(weights)


def test_text_video_score_comes_from_the_users_factory(plugin):
  score = frame_scores.make_text_video_score('viclip_plugin:scorer', plugin)
  videos = np.full((2, 3, 4, 4, 3), 255 * 0.5, np.uint8)
  np.testing.assert_allclose(score(videos, ['abcde', 'a']),
                             [1 - abs(127 / 255 - 0.5), 1 - abs(127 / 255 - .1)],
                             atol=1e-6)


@pytest.mark.parametrize('factory,path,match', [
    ('', 'weights', 'config.viclip.factory is empty'),
    ('viclip_plugin:scorer', '', 'config.viclip.path is empty'),
    ('viclip_plugin:scorer', '/no/such/file', 'does not exist'),
    ('viclip_plugin:not_callable', None, 'must return a callable'),
    ('no_such_module:x', None, "ViCLIP factory 'no_such_module:x': cannot "
     'import'),
])
def test_text_video_score_errors_name_the_field(plugin, factory, path, match):
  with pytest.raises(ValueError, match=match):
    frame_scores.make_text_video_score(factory, plugin if path is None else
                                       path)


def test_rfid_needs_weights_and_the_builtin_needs_a_dinov2_dir(tmp_path):
  with pytest.raises(errors.InputError, match='config.rfid.path is empty'):
    frame_scores.make_frame_features('', '')
  with pytest.raises(errors.InputError, match='does not exist'):
    frame_scores.make_frame_features('', str(tmp_path / 'dinov2'))
  frames = np.zeros((2, 3, 8, 8, 3), np.uint8)
  assert frame_scores.frames_of(frames).shape == (6, 8, 8, 3)
