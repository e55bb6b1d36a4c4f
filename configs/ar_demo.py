"""Demo: a class-conditional AR generator on the demo set's tokens, on a CPU.

    python -m vftok.main --config=configs/ar_demo.py --workdir=/tmp/ar_demo \
      --config.tokenizer.checkpoint=/tmp/vftok_demo

The tokenizer checkpoint is a configs/demo.py run. On first use the job
tokenizes the embedded demo set with it (jobs/tokenize_dataset.py; cached
in <workdir>/demo_tokens): 1024 clips of 5 latent frames x 16 tokens, each
labelled by its source video (4 classes, vftok/data/demo.py). The model is
the paper's architecture at depth 4, width 128 (the 64000-way output head is
most of the compute), trained on full 80-token sequences in time-first
order, so at the end it samples every class at 1, 4 and 16 tokens per frame
(KV cache, CFG 1.5), and the tokenizer decodes them: samples_<step>.png and
samples_<step>_n<n>.gif / .mp4 in the workdir. Then, for more samples and
the KV-cache speed-up:

    python -m vftok.main --config=configs/sample_ar.py --workdir=/tmp/ar_demo/samples \
      --config.ar_workdir=/tmp/ar_demo --config.benchmark

`:grid` is the same model on the demo-size 3D-grid counterpart's tokens
(configs/demo.py:grid; pass its workdir as tokenizer.checkpoint): raster
order, one length of 16 tokens per frame.

`:long` is §4.4's long-video model at demo size: 49-frame clips (3
overlapping 17-frame chunks, 13 latent frames; the demo videos are 120-250
frames, too short for 81-frame training clips that never share a frame with
the held-out ones), 8 tokens per latent frame, on a frame-conditioned
decoder (configs/demo.py:stage2, whose workdir is tokenizer.checkpoint), so
samples decode chunk by chunk; longer videos slide the window:

    python -m vftok.main --config=configs/ar_demo.py:long --workdir=/tmp/ar_long \
      --config.tokenizer.checkpoint=/tmp/vftok_demo2
    python -m vftok.main --config=configs/sample_ar.py --workdir=/tmp/ar_long/s \
      --config.ar_workdir=/tmp/ar_long --config.budgets='(8,)' --config.seconds=10
"""
from vftok import defaults
from vftok.data import chunks

LONG_CLIP_FRAMES = 49


def get_config(arg=None):
  flags = defaults.parse_flags(arg, ('grid', 'long'))
  c = defaults.ar_demo(defaults.ar_config(4))
  m = c.model
  m.width, m.heads = 128, 4     # head_dim 32
  m.dropout = 0.1               # as the paper's class-to-video models
  c.cond_dropout = 0.1
  o = c.optim
  o.lr = 2e-3
  o.warmup_steps = 10
  o.weight_decay = 0.05
  t = c.train
  # ~2.5 s / step on 2 idle cores (5 s at load 9); 200 steps ~ 3 epochs.
  t.total_steps = 200
  t.log_every = 20
  t.eval_every = 200
  t.checkpoint_every = 100
  if 'grid' in flags:   # on configs/demo.py:grid's tokens, raster order
    defaults.ar_grid(c)
  if 'long' in flags:
    c.data.clip_frames = LONG_CLIP_FRAMES
    c.data.tokens_per_frame = m.tokens_per_frame = 8
    m.num_frames = chunks.latent_frames(LONG_CLIP_FRAMES)   # 13
    m.seq_len = m.num_frames * m.tokens_per_frame
    c.eval.budgets = (1, 4, 8)
  c.eval.cfg_scale = 1.5
  c.eval.decode_steps = 25
  return c
