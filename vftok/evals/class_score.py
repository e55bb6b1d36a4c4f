"""Class alignment score: how likely a video classifier finds the wanted class.

For clips x_i that should show class y_i (AR samples conditioned on y_i, or
reconstructions of clips labelled y_i):

    score = mean_i p(y_i | x_i)

under a fixed video classifier (the paper uses UMT-L on Kinetics-600). It is
in [0, 1]; chance level is about 1 / C for a calibrated classifier.

Classifiers are pluggable. A classifier is any callable

    classifier(clips: uint8 [B, F, H, W, 3]) -> class probabilities [B, C]

with an attribute `class_names` (C strings, index = label id of the records).
The eval configs name a factory by dotted path, called with one string (a
checkpoint path):

    --config.classifier.factory=my_pkg.umt:make_umt_classifier \
    --config.classifier.path=/ckpt/umt-l-k600.pth

`my_pkg/umt.py` defines `make_umt_classifier(path)` returning such a callable
(resize / normalise inside it as that model expects; labels of the records
must be its class indices). 'module:attr' and 'module.attr' both work.

Built-in (`I3DClassifier`, the default factory `load_classifier`): softmax
regression on I3D features, trained with optax on the labelled demo clips by

    python -m vftok.main --config=configs/train_classifier.py \
        --workdir=/tmp/vftok_classifier      # -> classifier.npz

Feature layer: the 1024-d Mixed_5c features averaged over time and space
('pool'), not the 400-d Kinetics logits. The logits are a linear 1024 -> 400
projection of (almost) the same pooled activations trained to separate
Kinetics actions, so a linear head on them can only do worse than one on the
pooled features, and the demo classes are not actions: two of them (carphone
pristine vs heavily compressed) differ mostly in compression artefacts that
the Kinetics head is trained to ignore. Both cost one I3D pass; the layer is
stored in the .npz, so `layer='logits'` classifiers load the same way.
"""
import dataclasses
import importlib
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vftok import errors
from vftok.evals import video_features

FORMAT = 'vftok-i3d-softmax-regression/1'
DEFAULT_FACTORY = 'vftok.evals.class_score:load_classifier'


# ------------------------------------------------------------- the score ---

def check_labels(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be int [B], got {labels.dtype} '
                     f'{labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'labels must be class ids in [0, {num_classes}) of the '
                     f'classifier; got values in [{labels.min()}, '
                     f'{labels.max()}] (-1 = unlabelled records?)')
  return labels


def true_class_probs(probs, labels) -> np.ndarray:
  """probs [B, C], labels [B] -> p(label | clip) per clip, [B]."""
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2:
    raise ValueError(f'probabilities must be [B, C], got {probs.shape}')
  labels = check_labels(labels, probs.shape[1])
  if labels.shape[0] != probs.shape[0]:
    raise ValueError(f'{probs.shape[0]} probability rows for '
                     f'{labels.shape[0]} labels')
  return probs[np.arange(len(labels)), labels]


def class_score(probs, labels) -> float:
  """Mean probability of the conditioning class: the class alignment score."""
  return float(np.mean(true_class_probs(probs, labels)))


def score_clips(classifier: Callable, clips, labels) -> float:
  """Class alignment score of uint8 clips [B, F, H, W, 3] under `classifier`."""
  return class_score(classifier(clips), labels)


# ---------------------------------------------------------------- plug-in ---

def load_factory(spec: str, what: str = 'classifier') -> Callable:
  """'pkg.module:attr' or 'pkg.module.attr' -> the object it names (`what`:
  the kind of factory, for the messages)."""
  if ':' in spec:
    module, _, attr = spec.partition(':')
  else:
    module, _, attr = spec.rpartition('.')
  if not module or not attr:
    raise ValueError(f'{what} factory {spec!r} must be a dotted path '
                     "'package.module:function'")
  try:
    obj = importlib.import_module(module)
  except ImportError as e:
    raise ValueError(f'{what} factory {spec!r}: cannot import {module!r} '
                     f'({e})') from None
  for part in attr.split('.'):
    if not hasattr(obj, part):
      raise ValueError(f'{what} factory {spec!r}: {module!r} has no '
                       f'attribute {attr!r}')
    obj = getattr(obj, part)
  if not callable(obj):
    raise ValueError(f'{what} factory {spec!r} is not callable')
  return obj


def make_classifier(factory: str, path: str) -> Callable:
  """Builds a classifier with `factory(path)`; checks it has class_names.
  The built-in factory's file must exist (errors.InputError otherwise)."""
  if (factory or DEFAULT_FACTORY) == DEFAULT_FACTORY and not os.path.isfile(
      os.path.expanduser(path)):
    raise errors.InputError(
        f'config.classifier.path={path!r} does not exist: make a '
        'classifier.npz with: python -m vftok.main '
        '--config=configs/train_classifier.py --workdir=DIR (the labelled '
        'data in its config.data), then pass '
        '--config.classifier.path=DIR/classifier.npz')
  clf = load_factory(factory or DEFAULT_FACTORY)(path)
  if not callable(clf) or not hasattr(clf, 'class_names'):
    raise ValueError(f'classifier factory {factory!r} must return a callable '
                     'clips -> probabilities with a `class_names` attribute')
  return clf


# -------------------------------------------- built-in: I3D + linear head ---

@dataclasses.dataclass
class LinearHead:
  """Softmax regression on standardised features: softmax(((f - mean) /
  scale) @ weight + bias)."""
  weight: np.ndarray   # [D, C]
  bias: np.ndarray     # [C]
  mean: np.ndarray     # [D]
  scale: np.ndarray    # [] one scale for every feature (see train_linear)

  def logits(self, feats) -> np.ndarray:
    x = (np.asarray(feats, np.float64) - self.mean) / self.scale
    return x @ self.weight + self.bias

  def probabilities(self, feats) -> np.ndarray:
    z = self.logits(feats)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def train_linear(feats, labels, num_classes: int, steps: int = 500,
                 learning_rate: float = 0.01, weight_decay: float = 1e-3
                 ) -> LinearHead:
  """Full-batch Adam on softmax cross-entropy + weight_decay/2 |W|^2.

  The problem is convex and starts from zero weights, so the result is
  deterministic (no seed). Features are centred and divided by one global
  scale (the RMS of per-feature stds) rather than per feature: ReLU features
  that are nearly constant on the few training clips would otherwise be
  blown up and dominate on new clips.
  """
  feats = np.asarray(feats, np.float64)
  labels = check_labels(labels, num_classes)
  if feats.ndim != 2 or feats.shape[0] != labels.shape[0]:
    raise ValueError(f'features {feats.shape} do not match labels '
                     f'{labels.shape}')
  mean = feats.mean(axis=0)
  scale = np.sqrt(np.mean(feats.var(axis=0))) or 1.0
  x = jnp.asarray((feats - mean) / scale, jnp.float32)
  y = jax.nn.one_hot(labels, num_classes)
  params = {'w': jnp.zeros((feats.shape[1], num_classes)),
            'b': jnp.zeros((num_classes,))}
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    logits = x @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy(logits, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(jnp.square(p['w']))

  @jax.jit
  def fit(p):
    def step(carry, _):
      p, s = carry
      grads = jax.grad(loss_fn)(p)
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    return p

  params = jax.device_get(fit(params))
  return LinearHead(np.asarray(params['w'], np.float64),
                    np.asarray(params['b'], np.float64), mean,
                    np.float64(scale))


def accuracy(probs, labels) -> float:
  return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


class I3DClassifier:
  """clips uint8 [B, F, H, W, 3] -> probabilities [B, C]: a LinearHead on
  I3D features (layer / resolution / frames as stored). I3D is loaded on
  the first call, sharded over all devices."""

  def __init__(self, head: LinearHead, class_names: Sequence[str],
               layer: str = 'pool', resolution: int = 224,
               num_frames: int = 16, batch_size: int = 8, mesh=None):
    if head.weight.shape[1] != len(class_names):
      raise ValueError(f'{len(class_names)} class names for a head with '
                       f'{head.weight.shape[1]} classes')
    video_features.check_layer(layer, resolution)
    if head.weight.shape[0] != video_features.LAYERS[layer]:
      raise ValueError(f'head expects {head.weight.shape[0]}-d features; '
                       f'I3D {layer!r} gives {video_features.LAYERS[layer]}')
    self.head, self.class_names = head, [str(c) for c in class_names]
    self.layer, self.resolution, self.num_frames = layer, resolution, num_frames
    self._batch_size, self._mesh = batch_size, mesh
    self.features: Optional[video_features.I3DFeatures] = None

  def __call__(self, clips) -> np.ndarray:
    if self.features is None:
      self.features = video_features.I3DFeatures(
          self.layer, self.resolution, self.num_frames, self._batch_size,
          self._mesh)
    return self.head.probabilities(self.features(clips))

  def save(self, path: str) -> str:
    h = self.head
    tmp = f'{path}.tmp-{os.getpid()}.npz'  # np.savez appends .npz otherwise
    np.savez(tmp, format=np.array(FORMAT), weight=h.weight, bias=h.bias,
             mean=h.mean, scale=np.asarray(h.scale),
             class_names=np.array(self.class_names, dtype=np.str_),
             layer=np.array(self.layer), resolution=np.array(self.resolution),
             num_frames=np.array(self.num_frames))
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str, batch_size: int = 8, mesh=None) -> 'I3DClassifier':
    if not os.path.exists(path):
      raise ValueError(f'classifier file {path!r} does not exist (train one: '
                       'python -m vftok.main --config=configs/'
                       'train_classifier.py --workdir=DIR)')
    with np.load(path, allow_pickle=False) as z:
      if 'format' not in z or str(z['format']) != FORMAT:
        raise ValueError(f'{path} is not a {FORMAT} classifier')
      head = LinearHead(z['weight'], z['bias'], z['mean'], z['scale'][()])
      return cls(head, list(z['class_names']), str(z['layer']),
                 int(z['resolution']), int(z['num_frames']), batch_size, mesh)


def load_classifier(path: str) -> I3DClassifier:
  """The default factory: the built-in classifier from a classifier.npz."""
  return I3DClassifier.load(path)
