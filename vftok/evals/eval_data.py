"""The held-out evaluation clips of a tokenizer's data, batched for eval jobs.

Real clips with RGB frames: the reference set of rFVD / PSNR / SSIM
(jobs/eval_tokenizer.py) and of gFVD (jobs/eval_ar.py).
"""
import dataclasses

from absl import logging
import grain
import ml_collections

from vftok import defaults
from vftok.data import pipeline
from vftok.data import records


def eval_batches(config, tok_config, record_fields=pipeline.EVAL_FIELDS):
  """-> (data, clip count, lazily read batches of config.batch_size).

  config: data_root, eval_pattern, num_clips (-1: all), batch_size;
  record_fields: the record fields each batch carries."""
  # Data fields added to the code after the checkpoint was written keep their
  # current defaults, so older workdirs still resolve their data.
  fields = defaults.tokenizer_config().data.to_dict()
  fields.update(tok_config.data.to_dict())
  data_config = ml_collections.ConfigDict(fields)
  if config.data_root:
    data_config.root = config.data_root
  data = pipeline.resolve(data_config)
  if config.eval_pattern:
    data = dataclasses.replace(data, eval_pattern=config.eval_pattern)
  paths = records.expand(data.eval_pattern) if data.eval_pattern else []
  if not paths:
    raise ValueError(f'no evaluation records match {data.eval_pattern!r} '
                     '(config.eval_pattern)')
  source = grain.sources.ArrayRecordDataSource(paths)
  n = len(source) if config.num_clips < 0 else min(config.num_clips,
                                                   len(source))
  if 0 <= len(source) < config.num_clips:
    logging.warning('only %d evaluation clips (asked for %d)', len(source),
                    config.num_clips)
  if n < 2:
    raise ValueError(f'need at least 2 evaluation clips for FVD, got {n}')
  prepare = pipeline.Prepare(record_fields, data.latent_mean,
                             data.latent_std)
  ds = grain.MapDataset.source(source)[:n].map(prepare).batch(
      config.batch_size)
  first = ds[0]
  if 'frames' not in first:
    raise ValueError(f'evaluation records {data.eval_pattern!r} have no RGB '
                     '`frames`: pixel metrics need them')
  return data, n, (ds[i] for i in range(len(ds)))
