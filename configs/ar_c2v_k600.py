"""Class-to-video AR on Kinetics-600 VideoFlexTok tokens (paper Table 6).

    python -m vftok.main --config=configs/ar_c2v_k600.py:36 --workdir=DIR \
      --config.data.train_pattern='/data/k600_tokens/train-*.array_record' \
      --config.tokenizer.checkpoint=/ckpt/tokenizer_k600

The argument is the depth (10, 12, 16, 20, 24, 30, 36: AR 49M ... 2.29B
non-embedding parameters); default 36, the 2.2B model of the paper's main
class-to-video comparison (Table 1). Width 64 d, d heads, SwiGLU, learned
positions, vocab 64000, 5 x 256 = 1280 tokens in time-first order; 600
classes (+ the null class), conditioning dropout 0.1, FFN / attention /
projection dropout 0.1; AdamW lr 1.024 / width, wd 0.05, warmup 2.5 % then
cosine over 164B tokens, batch 512, clip 1.0, bf16. Models from d30 up want
FSDP on a pod: --config.mesh.fsdp=8.

`:36,runlocal` (or `:runlocal`) shrinks it to a CPU smoke test on the demo
set's tokens (needs --config.tokenizer.checkpoint=<tokenizer workdir>).
`:grid` (e.g. `:36,grid`) is the same model on the 3D-grid counterpart's
tokens (configs/tokenizer_k600.py:grid): raster order, one length of 256
tokens per frame (defaults.ar_grid).
"""
from vftok import defaults
from vftok.models import ar_config as ar


def get_config(arg=None):
  depth, flags = defaults.parse_arg(arg, 36)
  unknown = flags - {'runlocal', 'grid'}
  if unknown:
    raise ValueError(f'unknown config arguments {sorted(unknown)}')
  if depth not in ar.PAPER_C2V_DEPTHS:
    raise ValueError(f'depth {depth}: Table 6 has {ar.PAPER_C2V_DEPTHS}')
  c = defaults.ar_config(depth)
  m = c.model
  m.num_classes = 600
  m.dropout = 0.1
  m.dtype = 'bfloat16'
  m.vocab_size, m.seq_len = 64000, 1280
  m.num_frames, m.tokens_per_frame = 5, 256
  c.cond_dropout = 0.1
  defaults.ar_set_length(c, defaults.C2V_TRAIN_TOKENS, defaults.C2V_BATCH)
  c.optim.weight_decay = 0.05
  c.optim.grad_clip = 1.0
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 2000
  c.eval.budgets = (1, 4, 16, 32, 256)
  if 'runlocal' in flags:
    defaults.ar_runlocal(c)
  if 'grid' in flags:
    defaults.ar_grid(c)
  return c
