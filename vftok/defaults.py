"""Default values of every tokenizer config field (the paper's d18-d18 K600 run).

Config files in configs/ start from `tokenizer_config()` and override what
differs, so a field has one default and one meaning. Unknown keys given on the
command line (`--config.model.bogus=1`) are rejected by ml_collections.
"""
import ml_collections


def tokenizer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = 'train_tokenizer'
  c.seed = 0

  # ---- data: pre-encoded VAE latent records (vftok/data/records.py) -------
  c.data = ml_collections.ConfigDict()
  c.data.kind = 'records'            # 'records' | 'demo'
  c.data.root = ''                   # demo: where the embedded set is built
  c.data.demo_repa_teacher = 'i3d:Mixed_3c'  # demo: REPA features stored
  c.data.train_pattern = ''          # records: glob of ArrayRecord files
  c.data.eval_pattern = ''
  c.data.num_frames = 17             # pixel frames per clip (4n+1, causal VAE)
  c.data.resolution = 128            # pixel height = width
  c.data.global_batch_size = 512
  c.data.shuffle_seed = 0
  # Latent scaling: 'none' (raw VidTok latents, as the release), 'global'
  # or 'per_channel' (from the records' manifest statistics; the demo codec).
  c.data.normalize = 'none'
  c.data.worker_count = 0            # Grain multiprocessing workers (0: in-process)
  c.data.prefetch_buffer = 2
  c.data.skip_bad_records = False    # True: skip unreadable / invalid records
  c.data.max_bad_record_fraction = 0.01  # ... and stop above this fraction

  # ---- model (vftok/models/tokenizer.py) ---------------------------------
  m = c.model = ml_collections.ConfigDict()
  m.latent_channels = 16             # VidTok kl_causal_488_16chn
  m.latent_frames = 5                # (17 - 1) / 4 + 1
  m.latent_size = (16, 16)           # 128 px / 8
  m.patch_size = (1, 1, 1)           # (time, height, width) patchification
  m.registers = 256                  # K: max tokens per latent frame
  m.enc_depth = 18
  m.dec_depth = 18
  m.enc_width = 1152                 # 64 * depth
  m.dec_width = 1152
  m.head_dim = 64                    # heads = width / 64 = depth
  m.mlp_ratio = 4.0
  m.fsq_levels = (8, 8, 8, 5, 5, 5)  # 64000 codes
  m.fsq_drop_quant_p = 0.0           # per sample: pass FSQ input unrounded
  m.fsq_readout_scale = 1.0          # z = scale * Linear(h); see encoder.py
  # Positions (as the official release): learned per-axis tables, one max
  # size M for every axis, summed ('sum') or multiplied ('prod') over
  # (t, h, w) for patches and (t, k) for decoder registers; encoder
  # registers are one learned [max_frames, K, width] table.
  m.max_frames = 5                   # t_max: latent frames a clip may have
  m.pos_max_size = 16                # M of the patch tables (>= T, H/ph, W/pw)
  m.register_pos_max_size = 256      # M of the register table (>= T, K)
  m.pos_kind = 'sum'                 # 'sum' | 'prod'
  m.enc_pos_init_std = 0.02          # init std of the encoder position tables
  m.dec_pos_init_std = 0.02          # ... of the decoder's (decoder.py)
  # Decoder layout: per frame [registers, patches] (paper Sec. 3.2), and one
  # adaLN modulation per sub-sequence (adaLN params = block params, Table 5).
  m.decoder_registers_first = True
  m.adaln_subsequences = 2
  m.nested_dropout = 'pow2'          # 'pow2' | 'uniform' | 'none'
  m.uncond_prob = 0.1                # all registers -> learned null (CFG)
  m.decoder_attention = 'time_causal'  # 'time_causal' (stage 1) | 'full'
  m.first_frame_prob = 0.0           # stage 2: first latent frame given
  m.frame_conditioning = False       # decoder has the prefix token without
                                     # training it (set by released stage-2)
  # Rectified flow: x_t = t * eps + (1 - t) * x, t ~ logit-normal.
  m.time_mean = 0.0
  m.time_std = 1.0
  m.time_shift = 1.0
  # REPA: depth-2 time-causal head on decoder layer `repa_layer`.
  m.repa_layer = 1
  m.repa_depth = 2
  m.repa_dim = 1024                  # DINOv2-L feature width
  # Speed / memory (results unchanged; benchmarks/bench_train_step.py):
  # rematerialise blocks in the backward pass ('none' | 'dots' | 'full'),
  # and the attention kernel ('' = XLA's choice, 'xla', 'cudnn' on NVIDIA).
  m.remat = 'none'
  m.attention_impl = ''
  m.repa_weight = 1.0
  m.repa_source = 'random_stand_in'  # see vftok/models/features.py
  m.repa_teacher_path = ''           # 'dinov2': local HF checkpoint dir
  m.repa_teacher_layer = ''          # '' = final output; an int (DINOv2) or
                                     # an endpoint name (I3D)

  # ---- optimiser (vftok/optim.py) ----------------------------------------
  o = c.optim = ml_collections.ConfigDict()
  o.lr = 1.124e-3
  o.warmup_init_lr = 1e-6
  o.warmup_steps = 4000
  o.final_lr_ratio = 0.0
  o.b1 = 0.9
  o.b2 = 0.99
  o.weight_decay = 0.05
  o.grad_clip = 1.0
  o.mup_base_width = 256             # 0 disables muP
  o.encoder_lr_scale = 1.0           # encoder updates x this (see optim.py)
  o.encoder_delay_steps = 0          # encoder frozen this long, then
  o.encoder_ramp_steps = 0           # ramped in linearly (see optim.py)
  o.lr_scales = ()                   # (('encoder/to_codes', 0.1), ...): updates
                                     # of params under a path prefix x scale
  o.freeze = ()                      # top-level modules not trained, e.g.
                                     # ('encoder',) in stage 2

  # ---- mesh (vftok/sharding.py) ------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                   # -1: all devices not used by fsdp
  c.mesh.fsdp = 1

  # ---- loop ---------------------------------------------------------------
  t = c.train = ml_collections.ConfigDict()
  t.total_steps = 100_000
  t.log_every = 50
  t.eval_every = 5000
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3
  t.compute_dtype = 'bfloat16'       # params stay float32
  t.init_from = ''                   # workdir whose params start training
                                     # (stage 2 starts from stage 1)

  # ---- evaluation during training -----------------------------------------
  e = c.eval = ml_collections.ConfigDict()
  e.num_clips = 16
  e.sample_steps = 25
  e.guidance_scale = 3.0            # APG (the detokenize default, README)

  # ---- sampling defaults of Tokenizer.detokenize --------------------------
  # The release notebook's: 40 Euler steps, APG at scale 25 on the velocity
  # (per-channel norm threshold 0.6, no momentum, eta 0).
  s = c.sample = ml_collections.ConfigDict()
  s.steps = 40
  s.guidance = 'apg'                 # 'apg' | 'cfg'
  s.guidance_scale = 25.0            # 1.0: no guidance
  s.apg_momentum = 0.0
  s.apg_eta = 0.0
  s.apg_norm_threshold = 0.6
  return c


def set_depths(config, enc_depth: int, dec_depth: int):
  """Paper sizing: depth d, width 64 d, heads d (head_dim 64)."""
  m = config.model
  m.enc_depth, m.dec_depth = enc_depth, dec_depth
  m.enc_width, m.dec_width = 64 * enc_depth, 64 * dec_depth
  m.head_dim = 64
  return config


def paper_tokenizer(enc_depth: int, dec_depth: int, resolution: int,
                    patch_size=(1, 1, 1), batch: int = 512,
                    train_tokens: float = 400e9, arg=None):
  """A Table 5 tokenizer: 17 x resolution^2 clips, lengths in tokens
  (warmup 4B), REPA with DINOv2-L (1024-d) on decoder layer 1.
  arg='runlocal' shrinks it to a CPU smoke test on the demo data."""
  config = set_depths(tokenizer_config(), enc_depth, dec_depth)
  config.data.resolution = resolution
  config.data.global_batch_size = batch
  config.model.latent_size = (resolution // 8, resolution // 8)
  config.model.patch_size = tuple(patch_size)
  config.model.repa_layer = 1
  config.model.repa_dim = 1024
  # DINOv2-L on the key frames, on the fly (see models/features.py); pass
  # --config.model.repa_teacher_path=/path/to/dinov2-large (no download here).
  config.model.repa_source = 'dinov2'
  # At 5 x (256 patches + 256 registers) = 2560 tokens the XLA attention keeps
  # f32 scores [B, heads, 2560, 2560] per layer for the backward pass: 472 MB
  # per clip per d18 layer, 17 GB per clip over 36 layers. 'dots' recomputes
  # them and keeps the projections (benchmarks/bench_train_step.py).
  config.model.remat = 'dots'
  config.train.total_steps = steps_for_tokens(config, train_tokens)
  config.optim.warmup_steps = steps_for_tokens(config, 4e9)
  if arg == 'runlocal':
    runlocal(config)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r} (only "runlocal")')
  return config


def decoder_finetune(config, init_from: str = ''):
  """Stage 2 (paper Appendix F.1): the stage-1 run's params, encoder frozen
  (no gradients, no optimizer state), decoder with full attention, the clean
  first latent frame given with probability 0.5 (frame conditioning)."""
  config.model.decoder_attention = 'full'
  config.model.first_frame_prob = 0.5
  config.optim.freeze = ('encoder',)
  config.train.init_from = init_from
  return config


def steps_for_tokens(config, tokens: float) -> int:
  """Paper lengths are in tokens (latent patches seen); convert to steps."""
  m = config.model
  pt, ph, pw = m.patch_size
  per_clip = (m.latent_frames // pt) * (m.latent_size[0] // ph) * (
      m.latent_size[1] // pw)
  return max(1, int(tokens // (config.data.global_batch_size * per_clip)))


DEMO_REPA_DIM = 480  # I3D Mixed_3c channels (vftok/data/demo.py)


def runlocal(config):
  """Shrinks any tokenizer config to a smoke test on the demo data (CPU).

  The code path is unchanged: only sizes, data and step counts differ.
  """
  config.data.kind = 'demo'
  config.data.normalize = 'global'   # the demo codec's latents are not unit-scale
  config.data.resolution = 64
  config.data.global_batch_size = 4
  m = config.model
  m.latent_size = (8, 8)
  m.patch_size = (1, 1, 1)
  m.registers = 16
  m.enc_depth = m.dec_depth = 2
  m.enc_width = m.dec_width = 128
  m.head_dim = 32
  # The demo set's precomputed I3D features (real pretrained teacher).
  m.repa_source, m.repa_dim = 'records', DEMO_REPA_DIM
  config.train.total_steps = 10
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.checkpoint_every = 10
  config.train.compute_dtype = 'float32'
  config.optim.warmup_steps = 2
  config.eval.num_clips = 4
  config.eval.sample_steps = 4
  return config


def tiny_tokenizer_config():
  """The smallest meaningful tokenizer (unit tests): 3 latent frames of 4x4x4,
  4 registers, depth 2, width 32."""
  c = tokenizer_config()
  m = c.model
  m.latent_frames, m.latent_size, m.latent_channels = 3, (4, 4), 4
  m.registers, m.enc_depth, m.dec_depth = 4, 2, 2
  m.enc_width = m.dec_width = 32
  m.head_dim, m.repa_dim = 16, 8
  c.optim.mup_base_width = 16
  c.optim.warmup_steps = 2
  c.train.total_steps = 10
  c.train.compute_dtype = 'float32'
  c.data.global_batch_size = 8
  return c
