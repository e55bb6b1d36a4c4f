"""Reads Hugging Face checkpoints from a local directory, with no network.

A Hugging Face model directory holds `config.json` and the weights as
`model.safetensors` or shards listed in `model.safetensors.index.json`. The
JAX ports (DINOv2, T5, BERT/MiniLM) read the flat {name: array} dict this
returns and map names to their own parameter trees; nothing here imports
torch or transformers.
"""
import json
import os
from typing import Any, Dict, Tuple

import numpy as np

from vftok import errors


class CheckpointError(errors.InputError):
  """A checkpoint directory is missing, incomplete or of the wrong model
  (one line; vftok/main.py prints it without a traceback)."""


def load_config(path: str) -> Dict[str, Any]:
  cfg = os.path.join(path, 'config.json')
  if not os.path.isfile(cfg):
    raise CheckpointError(f'{path!r} is not a Hugging Face model directory: '
                          'no config.json')
  with open(cfg) as f:
    return json.load(f)


def load_weights(path: str) -> Dict[str, np.ndarray]:
  """All tensors of the checkpoint as float32/int NumPy arrays."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  single = os.path.join(path, 'model.safetensors')
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    with open(index) as f:
      files = sorted({os.path.join(path, v)
                      for v in json.load(f)['weight_map'].values()})
  else:
    raise CheckpointError(f'no model.safetensors (or index) in {path!r}; '
                          'PyTorch .bin checkpoints are not read')
  weights = {}
  for fname in files:
    for name, arr in load_file(fname).items():
      # bf16 tensors come back as a NumPy view of dtype bfloat16 (ml_dtypes);
      # compute in float32 and let the caller cast.
      weights[name] = (arr.astype(np.float32)
                       if np.issubdtype(arr.dtype, np.floating) or
                       arr.dtype.name == 'bfloat16' else arr)
  return weights


def load(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """(config dict, {tensor name: array}) of a local HF model directory."""
  return load_config(path), load_weights(path)


def take(weights: Dict[str, np.ndarray], name: str, prefixes=('',)
         ) -> np.ndarray:
  """weights[prefix + name] for the first prefix present (HF checkpoints
  differ in whether the base-model prefix, e.g. 'dinov2.', is kept)."""
  for p in prefixes:
    if p + name in weights:
      return weights[p + name]
  raise CheckpointError(f'checkpoint has no tensor {name!r} '
                        f'(tried prefixes {list(prefixes)})')
