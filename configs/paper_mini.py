"""The paper's comparisons in miniature, on a CPU (vftok/experiments/paper_mini.py).

    python -m vftok.main --config=configs/paper_mini.py --workdir=/tmp/paper_mini

On the embedded demo set (4 source videos = 4 classes): a VideoFlexTok
tokenizer (configs/demo.py) and its 3D-grid counterpart (configs/demo.py:grid)
at equal size and steps, a linear I3D classifier for the class score, the
tokenizers' sweeps (rFVD, PSNR vs tokens per frame), class-conditional AR
models of two sizes on each tokenizer's tokens (time-first / raster order),
and their evaluation with and without CFG at every budget. Writes
paper_mini.md (one table), fig6_model_size.png, fig7_budgets.png,
fig11_cfg.png and paper_mini.json. Each phase lives in its own subdirectory
and is skipped once finished, so a re-run continues where it stopped.
--config.tokenizer_workdir=DIR reuses a finished configs/demo.py run as the
VideoFlexTok tokenizer (the grid one then copies its config and steps).
Ranges over seeds (each number's median and min-max, each finding held on
n of 3 seeds):

    python -m vftok.main --config=configs/paper_mini.py \
        --workdir=/tmp/paper_mini_seeds --config.seeds='(0,1,2)' \
        --config.tokenizer_workdir='/tmp/vftok_demo_s{seed}'


Every sub-config below is the named config file's, with the changes listed;
override any field on the command line, e.g. --config.ar_large.train.total_steps=600.
"""
import importlib.util
import os

import ml_collections


def _load(name: str, arg=None):
  """configs/<name>.py's get_config(arg), found beside this file."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_paper_mini_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  smoke = arg == 'smoke'
  if arg not in (None, '', 'smoke'):
    raise ValueError(f"unknown config argument {arg!r}; choose 'smoke'")
  c = ml_collections.ConfigDict()
  c.job = 'paper_mini'
  c.seed = 0
  # Several seeds, e.g. --config.seeds='(0,1,2)': one whole run per seed in
  # <workdir>/seed_<s>, and the report gives each number's range over them.
  c.seeds = ()
  # A finished configs/demo.py run to reuse; with several seeds one per seed,
  # `{seed}` in the path standing for it (e.g. /tmp/vftok_demo_s{seed}).
  c.tokenizer_workdir = ''

  # ---- tokenizers: equal size and steps (no machine-sized length) ---------
  c.tokenizer = _load('demo')
  c.tokenizer.train.time_budget_s = 0.0
  c.tokenizer.train.total_steps = 1600
  c.tokenizer.train.eval_every = 1600
  c.tokenizer.train.checkpoint_every = 800
  # The grid counterpart is made from c.tokenizer (or the reused workdir's
  # config) by defaults.grid_counterpart: same sizes, steps and recipe.

  # ---- the class-score classifier (I3D features + softmax regression) -----
  # Fitted on codec decodes of the training clips and on both tokenizers'
  # reconstructions of some of them at every budget (the experiment fills in
  # reconstructions.tokenizers): under a classifier fitted on sharp clips
  # alone the demo tokenizer's 16-token reconstructions score 0.27 on 4
  # classes, so no AR sample could show its class. I3D at the clips' own
  # 64 px (not 224): 12x cheaper, and the scores only need to be compared.
  c.classifier = _load('train_classifier')
  c.classifier.features.resolution = 64

  # ---- tokenizer sweeps: every budget, the demo's sampler ------------------
  c.sweep = _load('eval_tokenizer')
  c.sweep.guidance, c.sweep.guidance_scales = 'apg', (3.0,)
  c.sweep.sample_steps = (25,)
  c.sweep.num_clips = 32
  # rFVD / gFVD here: I3D Mixed_5c pooled features at 112 px (4x cheaper than
  # the standard 224 px logits; the miniature compares, it does not report
  # paper-scale FVD).
  c.sweep.fvd.layer, c.sweep.fvd.resolution = 'pool', 112

  # ---- AR models: two sizes, trained alike on each tokenizer's tokens -----
  c.ar_small = _load('ar_demo')
  c.ar_small.model.depth, c.ar_small.model.width = 2, 64
  c.ar_small.model.heads = 2
  c.ar_large = _load('ar_demo')          # depth 4, width 128
  # Batch 8 for 2000 steps (1.7x the compute of the first runs' 16 x 600):
  # at 16 x 600 the grid ARs of 2 seeds of 3 had not learned their tokens
  # (training loss above a per-slot lookup table's entropy, the report's
  # token statistics) and missed 2x chance; docs/paper_experiments.md.
  for ar in (c.ar_small, c.ar_large):
    ar.data.global_batch_size = 8
    ar.train.total_steps = 2000
    ar.train.eval_every = 0              # evaluated by eval_ar below
    ar.train.checkpoint_every = 500

  # ---- AR evaluation: every budget, with and without CFG (Figs. 7, 11) ----
  c.eval_ar = _load('eval_ar')
  c.eval_ar.samples_per_condition = 8
  c.eval_ar.cfg_scales = (1.0, 3.0)
  c.eval_ar.decode.steps = (25,)
  c.eval_ar.decode.guidance_scale = 3.0
  c.eval_ar.batch_size = 8
  c.eval_ar.fvd.layer, c.eval_ar.fvd.resolution = 'pool', 112

  if smoke:  # the CI-sized run of every phase (tests/test_paper_mini.py)
    t = c.tokenizer
    t.data.resolution = 32
    t.model.latent_size, t.model.patch_size = (4, 4), (1, 1, 1)
    t.model.tokens_per_frame = 4
    t.model.enc_depth = t.model.dec_depth = 1
    t.model.enc_width = t.model.dec_width = 32
    t.model.head_dim = 16
    t.train.total_steps = t.train.eval_every = t.train.checkpoint_every = 2
    t.eval.num_clips, t.eval.sample_steps = 2, 2
    c.classifier.data.resolution = 32
    c.classifier.max_clips_per_class = 2
    c.classifier.features.resolution = 32
    c.classifier.reconstructions.clips_per_class = 1
    c.classifier.reconstructions.sample_steps = 2
    c.sweep.num_clips, c.sweep.sample_steps = 8, (2,)
    c.sweep.fvd.layer, c.sweep.fvd.resolution = 'pool', 32
    for depth, ar in ((1, c.ar_small), (2, c.ar_large)):
      ar.model.depth, ar.model.width, ar.model.heads = depth, 32, 2
      ar.data.global_batch_size = 8
      ar.train.total_steps = ar.train.checkpoint_every = 2
      ar.eval.budgets = (1, 4)
    c.eval_ar.samples_per_condition = 1
    c.eval_ar.decode.steps = (2,)
    c.eval_ar.fvd.layer, c.eval_ar.fvd.resolution = 'pool', 32
  return c
