"""Writes a train_tokenizer workdir's tokenizer as a bundle (api/pretrained.py).

    python -m vftok.main --config=configs/export_tokenizer.py \
        --config.checkpoint=/tmp/small64 --workdir=vftok/assets/small64
"""
from absl import logging

from vftok import errors
from vftok.api import pretrained


def run(config, workdir: str):
  if not config.checkpoint:
    raise errors.InputError('config.checkpoint is empty: pass the '
                            'train_tokenizer workdir to export')
  out = pretrained.export(config.checkpoint, workdir,
                          None if config.step < 0 else config.step,
                          readme=config.readme)
  logging.info('exported %s to %s', config.checkpoint, out)
  return out
