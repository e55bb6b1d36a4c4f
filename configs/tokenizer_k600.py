"""VideoFlexTok d18-d18 (or d12-d12) on Kinetics-600, 17x128x128 (Table 5).

    python -m vftok.main --config=configs/tokenizer_k600.py --workdir=DIR \
        --config.data.train_pattern='/data/k600-latents/train-*.array_record' \
        --config.model.repa_teacher_path=/weights/dinov2-large

Arguments (comma-separated):
  d12        the d12-d12 tokenizer (the paper's ablation size), 100B tokens.
  stage2     decoder fine-tuning (paper App. F.1) from the stage-1 workdir in
             --config.train.init_from: encoder frozen (no gradients, no
             optimizer state), decoder with full attention, the clean first
             latent frame given with probability 0.5 (frame conditioning, long
             videos). The paper fine-tunes its d18-d28 decoder for 400B tokens
             and notes that a short fine-tuning already gives frame
             conditioning; this uses 100B (a quarter of stage 1).
  grid       the 3D-grid controlled counterpart at the same sizes (Figs. 6,
             7, 11): one token per latent patch (256 per latent frame), no
             registers, no nested dropout; defaults.grid_counterpart.
  flat1d     Table 2's flat-1D tokens: encoder (and decoder) attend to every
             frame; defaults.flat_1d.
  distill    few-step decoding (models/distill.py): a student decoder
             distilled from the tokenizer in --config.train.init_from (stage 1
             or 2, or a configs/convert_official.py workdir; the student
             adopts its model) so that 1, 2 or 4 Euler steps, one pass each,
             land where that teacher's guided sampler (config.sample: the
             release notebook's 40 APG steps) does; detokenize then defaults
             to 4 steps. 10B tokens (our choice; the paper leaves
             distillation to future work), lr 1e-4 after 1000 warm-up steps.
  runlocal   a CPU smoke test on the embedded demo data (same code path).

Parameter counts (benchmarks/bench_train_step.py prints them): d18-d18
VideoFlexTok 899.8M, its grid counterpart 898.3M (no register table;
REPA head and adaLN included).
"""
from vftok import defaults


def get_config(arg=None):
  flags = defaults.parse_flags(arg, ('d12', 'stage2', 'grid', 'flat1d',
                                      'distill', 'runlocal'))
  depth = 12 if 'd12' in flags else 18
  c = defaults.tokenizer_config()

  # ---- data: VidTok kl_causal_488_16chn latents of 17 x 128 x 128 clips ----
  c.data.num_frames = 17
  c.data.resolution = 128
  c.data.global_batch_size = 512
  c.data.normalize = 'none'           # raw VAE latents, as the release

  # ---- model: d18-d18 (d12-d12), width 64 d, d heads -----------------------
  m = c.model
  m.latent_frames, m.latent_size, m.latent_channels = 5, (16, 16), 16
  m.patch_size = (1, 1, 1)            # 256 patches per latent frame
  m.tokens_per_frame = 256            # K registers per latent frame
  m.fsq_levels = (8, 8, 8, 5, 5, 5)   # 64000 codes
  m.enc_depth, m.dec_depth = depth, depth
  m.enc_width, m.dec_width = 64 * depth, 64 * depth
  m.head_dim = 64
  m.dtype = 'bfloat16'
  # REPA: a depth-2 head on decoder layer 1 predicts DINOv2-L (1024-d) patch
  # features of the key frames, computed on the fly (no download here).
  m.repa_layer, m.repa_depth, m.repa_dim = 1, 2, 1024
  m.repa_source = 'dinov2'
  # At 5 x (256 + 256) = 2560 tokens XLA's attention keeps f32 scores of
  # 472 MB per clip per layer for the backward pass: recompute them.
  m.remat = 'dots'

  # ---- optimiser: AdamW, muP base width 256, warmup + cosine --------------
  o = c.optim
  o.lr = 1.124e-3
  o.mup_base_width = 256
  o.b1, o.b2, o.weight_decay = 0.9, 0.99, 0.05
  o.grad_clip = 1.0

  # ---- length, in tokens (latent patches seen) -----------------------------
  c.optim.warmup_steps = defaults.steps_for_tokens(c, 4e9)
  c.train.total_steps = defaults.steps_for_tokens(
      c, 100e9 if 'd12' in flags else 400e9)

  if 'runlocal' in flags:
    defaults.runlocal(c)
  if 'grid' in flags:
    defaults.grid_counterpart(c)
  if 'flat1d' in flags:
    defaults.flat_1d(c)
  if 'stage2' in flags:
    defaults.decoder_finetune(c)
    c.train.total_steps = defaults.steps_for_tokens(c, 100e9)
  if 'distill' in flags:
    defaults.distill_decoder(c)
    c.optim.lr, c.optim.warmup_steps = 1e-4, 1000
    c.train.total_steps = defaults.steps_for_tokens(c, 10e9)
    if 'runlocal' in flags:
      c.optim.warmup_steps, c.train.total_steps = 2, 10
      c.sample.steps = 4
  return c
