"""VideoFlexTok d18-d28 on Panda-70M (30M subset), 17x256x256 (Table 5).

    python -m vftok.main --config=configs/tokenizer_panda.py --workdir=DIR \
        --config.data.train_pattern='/data/panda-latents/train-*.array_record'

Latents are 5 x 32 x 32 x 16; [1, 2, 2] patchification keeps 256 patches per
latent frame. Batch 10240 as in the paper; scale it to your pod (the lr is
not rescaled automatically). `:runlocal` shrinks it to a CPU smoke test.
`:grid` is the 3D-grid controlled counterpart at the same sizes: one token
per [1, 2, 2] latent patch, 256 per latent frame, no nested dropout
(defaults.grid_counterpart; parameters: VideoFlexTok d18-d28 2537.0M, grid
2535.5M, REPA head and adaLN included).
"""
from vftok import defaults


def get_config(arg=None):
  flags = defaults.parse_flags(arg, ('grid', 'runlocal'))
  c = defaults.tokenizer_config()

  # ---- data: VidTok latents of 17 x 256 x 256 clips ------------------------
  c.data.num_frames, c.data.resolution = 17, 256
  c.data.global_batch_size = 10240
  c.data.normalize = 'none'

  # ---- model: d18 encoder, d28 decoder, width 64 d, d heads ----------------
  m = c.model
  m.latent_frames, m.latent_size, m.latent_channels = 5, (32, 32), 16
  m.patch_size = (1, 2, 2)
  m.tokens_per_frame = 256
  m.fsq_levels = (8, 8, 8, 5, 5, 5)
  m.enc_depth, m.dec_depth = 18, 28
  m.enc_width, m.dec_width = 64 * 18, 64 * 28
  m.head_dim = 64
  m.dtype = 'bfloat16'
  m.repa_layer, m.repa_depth, m.repa_dim = 1, 2, 1024   # DINOv2-L
  m.repa_source = 'dinov2'
  m.remat = 'dots'

  # ---- optimiser: the paper's for every size (AdamW lr 1.124e-3, muP base
  # width 256, clip 1.0: defaults.py); length in tokens ---------------------
  c.optim.warmup_steps = defaults.steps_for_tokens(c, 4e9)
  c.train.total_steps = defaults.steps_for_tokens(c, 400e9)
  if 'runlocal' in flags:
    defaults.runlocal(c)
  if 'grid' in flags:
    defaults.grid_counterpart(c)
  return c
