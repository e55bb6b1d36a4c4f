"""Evaluates an AR model's samples over token budgets (vftok/jobs/eval_ar.py).

    python -m vftok.main --config=configs/eval_ar.py --workdir=/tmp/vftok_eval_ar \
        --config.ar_workdir=/tmp/vftok_ar_demo \
        --config.classifier.path=/tmp/vftok_classifier/classifier.npz

gFVD (samples vs the real held-out clips of the tokenizer's data) and the
class score (mean p(conditioning class | sample)) per budget and AR CFG
scale, as in the paper's Fig. 7. Writes eval_ar.csv / .md / .json / .png,
samples_cfg<s>.png and TensorBoard scalars.

Tuples are overridden as strings: --config.budgets='(1,4,16)'
--config.cfg_scales='(1.0,2.0)'. The paper's Kinetics-600 protocol: UMT-L as
the classifier (--config.classifier.factory=my_pkg.umt:make_umt_classifier
--config.classifier.path=...; see vftok/evals/class_score.py), many more
samples (--config.samples_per_condition) and real clips.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'eval_ar'
  c.ar_workdir = ''          # a train_ar workdir
  c.ar_step = -1             # -1: its latest checkpoint
  c.tokenizer_workdir = ''   # '': the AR run's tokenizer.checkpoint
  c.tokenizer_step = -1
  c.seed = 0

  # ---- what is generated ---------------------------------------------------
  c.classes = ()             # class models; (): every class
  c.captions = ()            # text models; (): the real clips' captions
  c.samples_per_condition = 4
  c.budgets = ()             # tokens per latent frame; (): 1, 2, 4, ..., K
  c.cfg_scales = (1.0, 1.5)  # AR classifier-free guidance; 1: none (both:
                             # Fig. 11's with / without CFG)
  c.temperature = 1.0
  c.top_k = 0
  c.top_p = 1.0
  c.batch_size = 8           # global; a multiple of the device count

  # ---- tokens -> latents (the tokenizer's flow decoder) ---------------------
  c.decode = ml_collections.ConfigDict()
  c.decode.steps = (25,)     # Euler step counts, e.g. '(5,10,25)': every
                             # budget decoded at each (Fig. 12: AR tokens x
                             # decoder steps vs FLOPs)
  c.decode.guidance = 'apg'  # as Tokenizer.detokenize (config.sample)
  c.decode.guidance_scale = 3.0
  c.decode.apg = ml_collections.ConfigDict()
  c.decode.apg.momentum = 0.0        # the release notebook's APG
  c.decode.apg.eta = 0.0
  c.decode.apg.norm_threshold = 0.6

  # ---- reference set: real held-out clips of the tokenizer's data ----------
  c.eval_pattern = ''        # another glob of latent records with `frames`
  c.data_root = ''           # demo data: where it is built, if not the default
  c.num_real_clips = -1      # -1: every held-out clip

  # ---- FVD features (the standard protocol; see vftok/models/pretrained/i3d.py) --------
  c.fvd = ml_collections.ConfigDict()
  c.fvd.layer = 'logits'
  c.fvd.resolution = 224
  c.fvd.num_frames = 16

  # ---- class score (class models; off unless a path is given) --------------
  c.classifier = ml_collections.ConfigDict()
  c.classifier.factory = 'vftok.evals.class_score:load_classifier'
  c.classifier.path = ''     # e.g. the classifier.npz of train_classifier

  # ---- ViCLIP score (text models; off unless given): factory(path) ->
  # score(videos uint8 [B, F, H, W, 3], captions) -> [B]; vftok ships no
  # ViCLIP: name your factory and its local weights (evals/frame_scores.py).
  c.viclip = ml_collections.ConfigDict()
  c.viclip.factory = ''
  c.viclip.path = ''

  # Also let the AR choose each sample's length (ar_sampling.sample_auto:
  # the levels up to the first whose mean next-token entropy is below the
  # threshold, nats, up to the top budget); a table of mean tokens used
  # beside the fixed budgets. 0: off.
  c.auto_budget = ml_collections.ConfigDict()
  c.auto_budget.entropy_threshold = 0.0
  c.auto_budget.min_budget = 1
  c.grid_samples = 2         # samples per condition in samples_cfg<s>.png
  return c
