"""Storage paths: an unsupported URL scheme fails at startup with one line
naming the field and the scheme; gs:// workdirs (written and read back)
pass, gs:// data (read or written as ArrayRecord) is refused with the mount
advice; local paths (the stand-in for a mounted bucket) pass and train as
usual; a URL's side files are written whole through etils.epath."""
import os
import subprocess
import sys

import pytest

from vftok.data import paths

from testing_utils import load_config
from testing_utils import ROOT


@pytest.mark.parametrize('url', ['s3://bucket/runs/a', 'hdfs://nn/runs/a',
                                 'http://host/runs/a', 'file:///tmp/a'])
def test_unsupported_workdir_scheme(url):
  scheme = url.split(':')[0]
  with pytest.raises(paths.UnsupportedPathError,
                     match=rf"^workdir='{url}': URL scheme {scheme}:// is not "
                     r'supported here \(supported: local or mounted paths, '
                     r'gs://\)$'):
    paths.check_config_paths(load_config('demo'), url)


def test_data_and_read_fields():
  c = load_config('demo')
  paths.check_config_paths(c, '/tmp/run')            # local: fine
  paths.check_config_paths(c, 'gs://bucket/run')     # gs:// workdir: fine
  c.data.kind, c.data.train_pattern = 'records', 's3://b/train-*.array_record'
  with pytest.raises(paths.UnsupportedPathError,
                     match=r"config.data.train_pattern='s3://b/train-\*"
                     r"\.array_record': URL scheme s3://"):
    paths.check_config_paths(c, '/tmp/run')
  c.data.train_pattern = 'gs://b/train-*.array_record'
  with pytest.raises(paths.UnsupportedPathError,
                     match=r'train_pattern=.*gs:// is not supported here '
                     r'\(ArrayRecord files are read and written by local '
                     r'path only: mount'):
    paths.check_config_paths(c, 'gs://bucket/run')
  c.data.train_pattern = '/mnt/gcs/b/train-*.array_record'  # gcsfuse mount
  c.train.init_from = 'gs://b/stage1'   # read back through etils.epath
  paths.check_config_paths(c, '/tmp/run')
  ar_demo = load_config('ar_demo')         # token records in the workdir
  with pytest.raises(paths.UnsupportedPathError, match='token_cache'):
    paths.check_config_paths(ar_demo, 'gs://b/ar')
  ar_demo.data.token_cache = '/tmp/tokens'
  paths.check_config_paths(ar_demo, 'gs://b/ar')
  enc = load_config('encode_videos')       # its workdir receives records
  with pytest.raises(paths.UnsupportedPathError,
                     match=r"^workdir='gs://b/latents'.*mount the bucket"):
    paths.check_config_paths(enc, 'gs://b/latents')
  ar = load_config('ar_demo')
  ar.tokenizer.checkpoint = 'HDFS://nn/tok'
  with pytest.raises(paths.UnsupportedPathError,
                     match=r'config.tokenizer.checkpoint=.*hdfs://'):
    paths.check_config_paths(ar, '/tmp/run')
  assert paths.scheme('C:/data') == '' and paths.scheme('tfds:ucf101') == ''


@pytest.mark.e2e
def test_main_rejects_at_startup(tmp_path):
  """Before any data is built or anything compiled: one FATAL line."""
  r = subprocess.run(
      [sys.executable, '-m', 'vftok.main', '--config=configs/demo.py',
       '--workdir=s3://bucket/run', f'--config.data.root={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': ROOT})
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      "FATAL workdir='s3://bucket/run': URL scheme s3:// is not supported "
      'here (supported: local or mounted paths, gs://)')
  assert not os.listdir(tmp_path)  # the demo set was not built
  r = subprocess.run(
      [sys.executable, '-m', 'vftok.main', '--config=configs/demo.py',
       f'--workdir={tmp_path}/w', '--coordinator_address=127.0.0.1:1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': ROOT})
  assert r.returncode != 0 and '--coordinator_address needs --distributed' in r.stderr


def test_url_side_files_are_written_whole_through_epath(tmp_path, monkeypatch):
  """A gs:// workdir's config.json / tables / pictures: written to a local
  temp file, copied to the URL only when complete. A local directory stands
  in for the bucket (etils.epath's local backend)."""
  from etils import epath
  from vftok import checkpoint
  from vftok.data import records
  bucket = tmp_path / 'bucket'
  url = 'gs://bucket/run'
  path = epath.Path
  local = lambda p: path(str(p).replace('gs://bucket', str(bucket)))
  monkeypatch.setattr(epath, 'Path', local)  # records and checkpoint use it
  c = load_config('demo')
  checkpoint.write_workdir_config(c, url)
  assert checkpoint.load_workdir_config(url).model.tokens_per_frame == 16
  with pytest.raises(RuntimeError):
    with records.atomic_path(url + '/psnr_1.md') as tmp:
      with open(tmp, 'w') as f:
        f.write('half')
      raise RuntimeError('the writer died')
  assert sorted(os.listdir(bucket / 'run')) == ['config.json']  # nothing half
  assert not os.path.exists('gs:')  # no local directory named after the URL
