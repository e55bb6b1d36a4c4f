"""The held-out evaluation clips of a tokenizer's data, batched for eval jobs.

Real clips with RGB frames: the reference set of rFVD / PSNR / SSIM
(jobs/eval_tokenizer.py) and of gFVD (jobs/eval_ar.py).
"""
import dataclasses

from vftok import training
from vftok.data import pipeline


def eval_batches(config, tok_config, record_fields=pipeline.EVAL_FIELDS):
  """-> (data, clip count, lazily read batches of config.batch_size).

  config: data_root, eval_pattern, num_clips (-1: all), batch_size;
  record_fields: the record fields each batch carries."""
  # Older workdirs lack data fields added since: they take the defaults.
  data = training.resolve_saved_data(tok_config.data, root=config.data_root)
  if config.eval_pattern:
    data = dataclasses.replace(data, eval_pattern=config.eval_pattern)
  n, ds = pipeline.eval_dataset(data, num_clips=config.num_clips,
                                batch_size=config.batch_size,
                                fields=record_fields, min_clips=2)  # FVD
  return data, n, (ds[i] for i in range(len(ds)))
