"""Export a trained tokenizer as a bundle (params, codec, latent scale).

    python -m vftok.main --config=configs/export_tokenizer.py \
        --config.checkpoint=/tmp/small64 --workdir=vftok/assets/small64

The bundle (vftok/api/pretrained.py) is what configs/reconstruct.py and
`vftok.api.pretrained.load` read; it needs neither the training data nor
Orbax. The workdir must not hold a bundle already.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'export_tokenizer'
  c.checkpoint = ''   # the train_tokenizer workdir
  c.step = -1         # -1: its latest checkpoint
  c.readme = ''       # text of the bundle's README.md (how it was trained)
  return c
