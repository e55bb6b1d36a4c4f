"""Trains the built-in class-alignment classifier (I3D features + softmax
regression) on labelled latent records; see vftok/evals/class_score.py.

    python -m vftok.main --config=configs/train_classifier.py \
        --workdir=/tmp/vftok_classifier

Training clips: the train records hold latents only, so their pixels are the
codec's decodes, i.e. the same pixel domain as the reconstructions and AR
samples the classifier will score. Held out: the eval records (for the demo,
the last fifth of every video, never seen in training), scored both on their
real frames and on their codec decodes.

Reconstructions (config.reconstructions.tokenizers, optional): the training
clips' (and held-out clips') reconstructions by the named tokenizers at each
budget they decode are added to the training (and reported) splits, labelled
as their clips. A classifier fitted on sharp clips alone can miss the classes
in a small tokenizer's blurry reconstructions (the demo's 16-token
reconstructions score 0.27 on 4 classes under it); with them it scores
generated samples in the pixel domain they come from. A sampler that ignores
the class still scores exactly chance under any classifier (the mean of
p(class | sample) over uniformly drawn classes is 1 / classes).

Writes to the workdir: classifier.npz and classifier.md (accuracy and class
score per split), and prints the table.
"""
import os
from typing import Dict, List

import numpy as np

from vftok import api
from vftok import errors
from vftok import training
from vftok.data import pipeline
from vftok.models import latent_codecs
from vftok.models import tokenizer as tokenizer_lib
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


def reconstruct(toks, config, data, codec, examples):
  """(uint8 pixels, labels) of `examples` reconstructed by every tokenizer
  in `toks` at every budget it decodes (config.reconstructions' sampler)."""
  r = config.reconstructions
  normalize = pipeline.make_normalizer(data)
  denormalize = pipeline.make_denormalizer(data)
  latents = normalize(np.stack([ex['latents'] for ex in examples]))
  labels = np.array([ex['label'] for ex in examples], np.int32)
  pixels, out_labels = [], []
  for tok in toks:
    for start in range(0, len(latents), _CHUNK):
      chunk = latents[start:start + _CHUNK]
      tokens = np.asarray(tok.tokenize(chunk))
      for k in tokenizer_lib.budgets(tok.config.model):
        lat = np.asarray(tok.detokenize(
            tokens[:, :, :k], steps=r.sample_steps, guidance='apg',
            guidance_scale=r.guidance_scale, seed=start))
        pixels.append(decode(codec, denormalize(lat)))
        out_labels.append(labels[start:start + _CHUNK])
  return np.concatenate(pixels), np.concatenate(out_labels)


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
  r = config.get('reconstructions') or {}
  toks = [api.Tokenizer.from_checkpoint(w, field='reconstructions.tokenizers')
          for w in r.get('tokenizers', ())]
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
  labels = {'held-out, real frames': y_held, 'held-out, codec decodes': y_held,
            'train (codec decodes)': y_train}
  fit_x, fit_y = [feats['train (codec decodes)']], [y_train]
  if toks:
    few = balanced(train, r.clips_per_class)
    px, y = reconstruct(toks, config, data, codec, few)
    feats['train (reconstructions)'] = extract(px)
    labels['train (reconstructions)'] = y
    fit_x.append(feats['train (reconstructions)'])
    fit_y.append(y)
    px, y = reconstruct(toks, config, data, codec, held)
    feats['held-out, reconstructions'] = extract(px)
    labels['held-out, reconstructions'] = y
  t = config.train
  head = class_score.train_linear(np.concatenate(fit_x),
                                  np.concatenate(fit_y), len(names), t.steps,
                                  t.learning_rate, t.weight_decay)
  clf = class_score.I3DClassifier(head, names, f.layer, f.resolution,
                                  f.num_frames, f.batch_size)
  path = clf.save(os.path.join(workdir, 'classifier.npz'))

  results, lines = {}, ['| split | clips | accuracy | class score |',
                        '|---|---|---|---|']
  for split, x in feats.items():
    y = labels[split]
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
