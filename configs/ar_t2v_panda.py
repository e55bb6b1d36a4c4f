"""Text-to-video AR on Panda-70M VideoFlexTok tokens (paper Table 7).

    python -m vftok.main --config=configs/ar_t2v_panda.py:20 --workdir=DIR \
      --config.data.train_pattern='/data/panda_tokens/train-*.array_record' \
      --config.tokenizer.checkpoint=/ckpt/tokenizer_panda \
      --config.text.path=/ckpt/flan-t5-xl

The argument is the depth: 12, 20, 30, 42 (the paper's "AR 400M, 1.1B,
2.0B, 5.2B"; models/ar.py reproduces the total counts of d30 and d42 with a
text input as wide as the model), each trained compute-optimally (D = 20 N tokens, batch
sqrt-scaled to a power of 2: vftok/models/compute_plan.py reproduces Table 7's
3.25B / 12B / 38B / 101B tokens and batches 128 / 256 / 512 / 512); add
',4c' for the 4x over-trained 5.2B (402B tokens). Default 20: the 1.1B
VideoFlexTok model the paper compares with the 5.2B 3D-grid one.

Text: a frozen T5 encoder loaded from a local Hugging Face directory
(config.text.path; no download), cross-attention in every block (what
Table 7's totals imply, see models/ar.py), conditioning dropout 0.1, no
Transformer dropout. The paper says only "T5"; the default width 2048 is
FLAN-T5-XL, the encoder of LlamaGen, which the paper follows for the
cross-attention design. For another T5 set config.model.text_dim to its
d_model (the job checks it). Captions are encoded on the host per batch
(jobs/train_ar.py); 120 tokens as LlamaGen.

`:long` is §4.4's model (Fig. 1): 10-second videos of 81 frames, 21 latent
frames x 32 tokens = 672 tokens, on token records of 81-frame clips
(encode_videos with num_frames=81 stores them per 17-frame chunk;
tokenize_dataset with tokens_per_frame=32 makes [21, 32] tokens through
tokenize_long) of a frame-conditioned (stage-2) tokenizer, which decodes
its samples chunk by chunk. The paper's "3.2B" is the depth whose total
is nearest (compute_plan.depth_nearest_total: d35, 3.11B with a text input
as wide as the model; d36 is 3.36B), trained on ~55B tokens.

`:runlocal` shrinks it to a CPU smoke test on the demo tokens with the
bundled MiniLM encoder (needs --config.tokenizer.checkpoint). `:grid` (e.g.
`:42,grid`, the paper's 5.2B 3D-grid model) trains on the grid counterpart's
tokens (configs/tokenizer_panda.py:grid) in raster order, at its one length
(defaults.ar_grid).
"""
from vftok import defaults
from vftok.models import compute_plan
from vftok.models import ar_config as ar


# §4.4: 81 frames -> 21 latent frames (17-frame chunks sharing one frame),
# 32 tokens each; "a 3.2B model ... ~55B tokens".
LONG_SHAPE = dict(num_frames=21, tokens_per_frame=32, seq_len=21 * 32)
LONG_PARAMS = 3.2e9
LONG_TRAIN_TOKENS = 55e9


def get_config(arg=None):
  depth, flags = defaults.parse_arg(arg, 20)
  unknown = flags - {'runlocal', '4c', 'grid', 'long'}
  if unknown:
    raise ValueError(f'unknown config arguments {sorted(unknown)}')
  long = 'long' in flags
  if long and flags & {'grid', 'runlocal'}:
    raise ValueError(':long is VideoFlexTok\'s 81-frame model: no grid one, '
                     'and its demo-size run is configs/ar_demo.py:long')
  if long and depth == 20 and not any(
      p.strip().lstrip('d').isdigit() for p in (arg or '').split(',')):
    depth = compute_plan.depth_nearest_total(
        LONG_PARAMS, text_dim='width', num_classes=0, **LONG_SHAPE)
  if depth not in ar.PAPER_T2V_DEPTHS and not long:
    raise ValueError(f'depth {depth}: Table 7 has {ar.PAPER_T2V_DEPTHS}')
  c = defaults.ar_config(depth)
  m = c.model
  m.num_classes = 0
  m.text_dim = 2048             # FLAN-T5-XL d_model
  m.cross_attn_every = 1
  m.dropout = 0.0
  m.dtype = 'bfloat16'
  m.vocab_size, m.seq_len = 64000, 1280
  m.num_frames, m.tokens_per_frame = 5, 256
  c.cond_dropout = 0.1
  c.text.encoder = 't5'
  c.text.path = ''              # a local HF T5 (or T5 encoder) directory
  c.text.max_length = 120
  c.text.cache_size = 0         # ~30M distinct captions: nothing to reuse
  plan = compute_plan.plan_for_depth(
      depth, tokens_per_video=defaults.PAPER_TOKENS_PER_VIDEO,
      conditioning='text', overtrain=4.0 if '4c' in flags else 1.0)
  defaults.ar_set_length(c, plan.tokens, plan.batch_size)
  c.optim.lr = plan.learning_rate
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 2000
  c.eval.budgets = (1, 4, 16, 32, 256)
  c.eval.captions = ('a dog running on a beach at sunset',
                     'a person cooking in a kitchen')
  if long:
    m.num_frames, m.tokens_per_frame = (LONG_SHAPE['num_frames'],
                                        LONG_SHAPE['tokens_per_frame'])
    m.seq_len = LONG_SHAPE['seq_len']
    c.data.tokens_per_frame = m.tokens_per_frame
    plan = compute_plan.plan_for_depth(depth, tokens_per_video=m.seq_len,
                                       conditioning='text')
    defaults.ar_set_length(c, LONG_TRAIN_TOKENS, plan.batch_size,
                           tokens_per_video=m.seq_len)
    c.optim.lr = plan.learning_rate
    c.eval.budgets = (1, 4, 32)
  if 'runlocal' in flags:
    defaults.ar_runlocal(c, text=True)
  if 'grid' in flags:
    defaults.ar_grid(c)
  return c
