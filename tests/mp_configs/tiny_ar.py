"""The AR trainer at test size (as tests/test_ar_job.py's tiny_ar) on token
records: `--config=tests/mp_configs/tiny_ar.py:PATTERN` (64-code tokens,
5 frames x 4 tokens, 4 classes)."""
from vftok import defaults


def get_config(pattern):
  c = defaults.ar_config(1)
  m = c.model
  m.depth, m.width, m.heads = 1, 32, 2
  m.vocab_size, m.num_frames, m.tokens_per_frame, m.seq_len = 64, 5, 4, 20
  m.num_classes, m.dropout = 4, 0.1
  c.data.train_pattern = pattern
  c.data.global_batch_size = 8
  c.optim.lr, c.optim.warmup_steps = 1e-2, 1
  t = c.train
  t.total_steps, t.log_every, t.checkpoint_every, t.eval_every = 8, 1, 4, 0
  return c
