"""Samples videos from a trained AR workdir (vftok/jobs/sample_ar.py).

    python -m vftok.main --config=configs/sample_ar.py --workdir=OUT \
      --config.ar_workdir=/tmp/ar_demo --config.classes='(0, 1, 2, 3)' \
      --config.budgets='(1, 4, 16)' --config.cfg_scale=2.0 --config.benchmark

    # text-conditioned workdir:
    #   --config.captions="('a man talking in a moving car',)"

    # image-to-video from held-out clips 0 and 5 (their first latent frame
    # kept), or an edit keeping every frame's first 2 tokens:
    #   --config.given.clips='(0, 5)' --config.given.frames=1
    #   --config.given.clips='(0, 5)' --config.given.tokens=2 --config.classes='(3,)'

Writes OUT/<prefix>.png (one row per condition x budget), <prefix>_n<n>.mp4 /
.gif, <prefix>.npz (tokens) and <prefix>.json (settings, tokens/s, paths).
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'sample_ar'
  c.ar_workdir = ''             # a train_ar workdir
  c.ar_step = -1                # -1: its latest checkpoint
  c.tokenizer_workdir = ''      # '' : the AR run's tokenizer.checkpoint
  c.tokenizer_step = -1
  c.classes = ()                # class ids; () : the AR run's eval classes
  c.captions = ()               # text models; () : the AR run's eval captions
  c.samples = 2                 # videos per condition
  c.budgets = (1, 4, 16)        # tokens per latent frame
  c.cfg_scale = 1.5             # 1: no guidance
  c.temperature = 1.0           # 0: greedy
  c.top_k = 0                   # 0: off
  c.top_p = 1.0                 # 1: off
  c.seed = 0
  c.decode_steps = 25           # tokenizer flow-decoder Euler steps
  c.decode_guidance = 1.0
  c.fps = 8                     # of the samples (and of `seconds`)
  c.seconds = 0.0               # > the model's window: slide it (0: one
  #                               window); 81 frames at 8 fps = 10 s
  c.overlap_frames = 0          # latent frames of context per slide (0:
  #                               half the window)
  c.formats = ('mp4', 'gif')
  c.prefix = 'samples'
  c.benchmark = False           # tokens/s with and without the KV cache

  # Sampling from given tokens: these held-out clips of the tokenizer's data
  # are tokenized and part of their tokens kept (exactly), the rest sampled
  # with them in the context; `samples` videos per clip and condition, and
  # a first row showing the clips.
  c.given = ml_collections.ConfigDict()
  c.given.clips = ()            # eval clip indices; () : from scratch
  c.given.frames = 0            # keep the first latent frames whole
  #                               (1: image-to-video; more: continuation)
  c.given.tokens = 0            # keep every frame's first tokens (an edit:
  #                               the coarse content under a new condition)

  # The AR decides each sample's length (ar_sampling.sample_auto): the
  # levels up to the first whose mean next-token entropy is below this
  # (nats), up to max(budgets); 0: off.
  c.auto_budget = ml_collections.ConfigDict()
  c.auto_budget.entropy_threshold = 0.0
  c.auto_budget.min_budget = 1
  return c
