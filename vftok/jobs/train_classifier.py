"""Trains the built-in class-alignment classifier (I3D features + softmax
regression) on labelled latent records; see vftok/evals/class_score.py.

    python -m vftok.main --config=configs/train_classifier.py \
        --workdir=/tmp/vftok_classifier

Training clips: the train records hold latents only, so their pixels are the
codec's decodes, i.e. the same pixel domain as the reconstructions and AR
samples the classifier will score. Held out: the eval records (for the demo,
the last fifth of every video, never seen in training), scored both on their
real frames and on their codec decodes.

Writes to the workdir: classifier.npz and classifier.md (accuracy and class
score per split), and prints the table.
"""
import os
from typing import Dict, List

import numpy as np

from vftok import errors
from vftok import training
from vftok.models import latent_codecs
from vftok.data import records
from vftok.evals import class_score
from vftok.evals import video_features

_CHUNK = 32  # clips decoded by the codec at once


def class_names(config, manifest, labels) -> List[str]:
  if config.class_names:
    return [str(n) for n in config.class_names]
  sources = manifest.get('sources') or []
  if sources and all('label' in s and 'name' in s for s in sources):
    return [s['name'] for s in sorted(sources, key=lambda s: s['label'])]
  return [f'class_{i}' for i in range(int(np.max(labels)) + 1)]


def balanced(examples, per_class: int) -> List[Dict]:
  """The first `per_class` labelled examples of every class, in file order."""
  counts, out = {}, []
  for ex in examples:
    y = int(ex['label'])
    if y >= 0 and counts.get(y, 0) < per_class:
      counts[y] = counts.get(y, 0) + 1
      out.append(ex)
  return out


def decode(codec, latents) -> np.ndarray:
  """Raw (un-normalised) record latents -> uint8 pixels, in chunks."""
  out = [codec.decode(np.asarray(latents[i:i + _CHUNK], np.float32))
         for i in range(0, len(latents), _CHUNK)]
  return np.clip(np.round(np.concatenate(out)), 0, 255).astype(np.uint8)


def run(config, workdir: str) -> Dict[str, float]:
  # Data fields the config leaves out (e.g. the demo build's REPA teacher)
  # take the tokenizer defaults, so the demo set found is the one training
  # builds and uses.
  data = training.resolve_saved_data(config.data)
  records.require_files(
      'data.eval_pattern', data.eval_pattern, 'latent record',
      records.make_latents_hint('data.eval_pattern', 'eval'))
  codec = latent_codecs.load_codec(data)
  train = balanced(records.read_records(data.train_pattern),
                   config.max_clips_per_class)
  held = [ex for ex in records.read_records(data.eval_pattern)
          if int(ex['label']) >= 0]
  if not train or not held:
    raise errors.InputError(
        'need labelled train and eval records (label >= 0): encode them '
        'with --config.label_from_dir=True (or a manifest with labels)')
  if 'frames' not in held[0]:
    raise errors.InputError(
        f'eval records {data.eval_pattern!r} have no frames: encode them with '
        '--config.store_frames=True')
  records.makedirs(workdir)  # every input found: now the workdir is made
  y_train = np.array([ex['label'] for ex in train], np.int32)
  y_held = np.array([ex['label'] for ex in held], np.int32)
  names = class_names(config, data.manifest,
                      np.concatenate([y_train, y_held]))

  f = config.features
  extract = video_features.I3DFeatures(f.layer, f.resolution, f.num_frames,
                                       f.batch_size)
  feats = {
      'train (codec decodes)': extract(decode(
          codec, np.stack([ex['latents'] for ex in train]))),
      'held-out, real frames': extract(np.stack([ex['frames'] for ex in held])),
      'held-out, codec decodes': extract(decode(
          codec, np.stack([ex['latents'] for ex in held]))),
  }
  t = config.train
  head = class_score.train_linear(feats['train (codec decodes)'], y_train,
                                  len(names), t.steps, t.learning_rate,
                                  t.weight_decay)
  clf = class_score.I3DClassifier(head, names, f.layer, f.resolution,
                                  f.num_frames, f.batch_size)
  path = clf.save(os.path.join(workdir, 'classifier.npz'))

  results, lines = {}, ['| split | clips | accuracy | class score |',
                        '|---|---|---|---|']
  for split, x in feats.items():
    y = y_train if split.startswith('train') else y_held
    probs = head.probabilities(x)
    acc, score = class_score.accuracy(probs, y), class_score.class_score(
        probs, y)
    results[f'{split}/accuracy'], results[f'{split}/class_score'] = acc, score
    lines.append(f'| {split} | {len(y)} | {acc:.3f} | {score:.3f} |')
  text = '\n'.join([
      f'Classifier: softmax regression on {extract.description}; classes '
      f'{names}; chance accuracy {1 / len(names):.3f}.', ''] + lines + [
          '', f'I3D: {extract.seconds_per_clip:.3f} s per clip; saved '
          f'{path}']) + '\n'
  with records.atomic_path(os.path.join(workdir, 'classifier.md')) as tmp:
    with open(tmp, 'w') as fh:
      fh.write(text)
  print('\n' + text, flush=True)
  return results
