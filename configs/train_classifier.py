"""Trains the built-in class-alignment classifier on the labelled demo clips.

    python -m vftok.main --config=configs/train_classifier.py \
        --workdir=/tmp/vftok_classifier

Writes classifier.npz (load: vftok.evals.class_score.I3DClassifier.load, or
--config.classifier.path=.../classifier.npz in configs/eval_tokenizer.py) and
classifier.md with held-out accuracy. Labels are the records' `label` (for
the demo: the source video, vftok/data/demo.py VIDEOS). About 6 minutes on 2
CPU cores with the defaults (192 I3D passes at 224 x 224).
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'train_classifier'
  c.seed = 0  # unused by the convex fit; kept for a uniform job interface

  # The data the tokenizer demo trains on (configs/demo.py): train records
  # for fitting, eval records (later, disjoint part of each video) held out.
  c.data = ml_collections.ConfigDict()
  c.data.kind = 'demo'       # 'demo' | 'records'
  c.data.root = ''
  c.data.train_pattern = ''
  c.data.eval_pattern = ''
  c.data.num_frames = 17
  c.data.resolution = 64
  c.data.normalize = 'global'
  c.class_names = ()         # () -> from the manifest's sources, by label
  c.max_clips_per_class = 32  # training clips per class (first in file order)

  # I3D features the linear head reads (stored in the .npz).
  c.features = ml_collections.ConfigDict()
  c.features.layer = 'pool'  # 1024-d Mixed_5c; see vftok/evals/class_score.py
  c.features.resolution = 224
  c.features.num_frames = 16
  c.features.batch_size = 8

  # Optional: also fit on the reconstructions of these tokenizer workdirs
  # (each at every budget it decodes), so that the classifier scores the
  # pixel domain of decoded samples (vftok/jobs/train_classifier.py).
  c.reconstructions = ml_collections.ConfigDict()
  c.reconstructions.tokenizers = ()
  c.reconstructions.clips_per_class = 16
  c.reconstructions.sample_steps = 25
  c.reconstructions.guidance_scale = 3.0   # APG, the demo's sampler

  c.train = ml_collections.ConfigDict()
  c.train.steps = 500
  c.train.learning_rate = 0.01
  c.train.weight_decay = 1e-3
  return c
