"""`python -m vftok.main` for tests/test_multiprocess.py, with two test hooks
(set by environment variables, so the job itself runs unchanged):

  VFTOK_TEST_SCALARS=PATH   every write_scalars call is appended to PATH as
                            one JSON line, flushed (the process may be killed)
  VFTOK_TEST_HANG_AFTER=N   once the checkpoint of step N is committed, write
                            PATH.hung and sleep: the test then SIGKILLs the
                            process, as a host lost mid-run
"""
import json
import os
import sys
import time

from absl import app
from clu import metric_writers

from vftok import checkpoint
from vftok import main

_SCALARS = os.environ.get('VFTOK_TEST_SCALARS')
_HANG_AFTER = int(os.environ.get('VFTOK_TEST_HANG_AFTER', '0'))

if _SCALARS:
  _create = metric_writers.create_default_writer

  def _recording_writer(*args, **kwargs):
    writer = _create(*args, **kwargs)
    write = writer.write_scalars

    def write_scalars(step, scalars):
      with open(_SCALARS, 'a') as f:
        f.write(json.dumps({'step': int(step), **{
            k: float(v) for k, v in scalars.items()}}) + '\n')
      return write(step, scalars)
    writer.write_scalars = write_scalars
    return writer
  metric_writers.create_default_writer = _recording_writer

if _HANG_AFTER:
  _save = checkpoint.Checkpointer.maybe_save

  def _maybe_save(self, step, state, data_iter=None, force=False):
    saved = _save(self, step, state, data_iter=data_iter, force=force)
    if int(step) == _HANG_AFTER:
      self.wait()  # committed on this process (and, by Orbax, on all)
      with open(f'{_SCALARS}.hung', 'w') as f:
        f.write(str(step))
      sys.stderr.flush()
      time.sleep(3600)
    return saved
  checkpoint.Checkpointer.maybe_save = _maybe_save

if __name__ == '__main__':
  app.run(main.main, flags_parser=main.parse_flags)
