"""`Tokenizer`: what notebooks, evaluation and the AR model import.

    tok = vftok.Tokenizer.from_checkpoint(workdir)
    tokens = tok.tokenize(latents)                 # int32 [B, T, K]
    recon = tok.detokenize(tokens[:, :, :4])       # any 1 <= k <= K per frame

Inputs are checked before anything runs on a device: a wrong shape, channel
count, non-finite latents or out-of-range token ids raise one ValueError that
names the problem.
"""
import functools
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vftok import checkpoint
from vftok import flow
from vftok.api import budgets as budgets_lib
from vftok.api import long_video
from vftok.api import streaming
from vftok import sharding as sharding_lib
from vftok import training
from vftok.data import chunks as chunks_lib
from vftok.models import fsq
from vftok.models import layers
from vftok.models import tokenizer as tokenizer_lib
from vftok.models.pretrained import official


def official_config(release, path: str,
                    latent_shape=None) -> ml_collections.ConfigDict:
  """The vftok tokenizer config of a released checkpoint (`release`:
  official.model_config of the file at `path`; see Tokenizer.from_official):
  the release's architecture, float32, and the notebook's sampling defaults
  (config.sample)."""
  from vftok import defaults  # pylint: disable=g-import-not-at-top
  config = defaults.tokenizer_config()
  m = config.model
  for key, value in release['model'].items():
    m[key] = value
  _, ph, pw = m.patch_size
  if latent_shape is None:
    side = min(16, m.pos_max_size)
    latent_shape = (min(5, m.max_frames), side * ph, side * pw)
  m.latent_frames, m.latent_size = int(latent_shape[0]), tuple(
      int(v) for v in latent_shape[1:])
  m.first_frame_prob = 0.0
  m.repa_source = 'dinov2'          # the release carries no REPA head
  config.model.dtype = 'float32'
  config.data.normalize = 'none'    # released models take raw VAE latents
  config.official = ml_collections.ConfigDict(
      {'source': os.path.abspath(path)})
  return config


def clip_noise(seed: int, ids, shape):
  """Initial decoder noise per clip: clip i gets normal(fold_in(key(seed), i))
  of `shape`, so a clip decodes alike in any batch, order or device count."""
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                              shape))(ids)


class Tokenizer:
  """A VideoFlexTok tokenizer: float latents <-> int32 tokens [B, T, K].

  The same class serves the paper's controlled counterparts: a grid
  tokenizer (config.model.token_structure='grid', K = latent patches per
  frame, decoded only at all K) and the flat-1D ablation (its tokens depend
  on every frame: no streaming, no long videos).

  mesh (optional): run on a device mesh with the batch split over every
  device (params replicated, unless already laid out on that mesh); inputs
  may be host arrays that every process holds in full, outputs are global
  arrays (sharding.fetch gathers them). One front-end for notebooks and the
  sharded evaluation jobs.
  """

  def __init__(self, config: ml_collections.ConfigDict, params, vae=None,
               mesh=None):
    self.config = config
    self.mesh = mesh
    if mesh is not None and not all(
        getattr(getattr(x, 'sharding', None), 'mesh', None) == mesh
        for x in jax.tree.leaves(params)):
      params = jax.device_put(params, sharding_lib.replicated(mesh))
    self.params = params
    self.vae = vae  # a vftok.VidTok for encode_video / decode_video
    self.step = None  # the checkpoint step (from_checkpoint)
    self._teacher = None  # a distilled student's teacher (teacher())
    m = config.model
    self.model = tokenizer_lib.build(
        m, layers.optional_dtype(config.model.dtype))
    self._models = {tuple(m.latent_size): self.model}   # by latent (H, W)
    self.levels = tuple(m.fsq_levels)

  def model_for(self, hw):
    """The model for latent frames of (H, W): the same params, a module with
    that patch grid (masks and position crops are static per grid). jit
    traces once per input shape, so each size compiles once."""
    hw = tuple(int(v) for v in hw)
    if hw not in self._models:
      m = ml_collections.ConfigDict(self.config.model.to_dict())
      m.latent_size = hw
      self._models[hw] = tokenizer_lib.build(
          m, layers.optional_dtype(m.dtype))
    return self._models[hw]

  # ---- construction -------------------------------------------------------
  @classmethod
  def from_config(cls, config, seed: int = 0) -> 'Tokenizer':
    """Randomly initialised parameters (for tests and shape checks)."""
    model = tokenizer_lib.build(config.model)
    variables = jax.jit(model.init)(jax.random.key(seed),
                                    *tokenizer_lib.dummy_inputs(config.model))
    return cls(config, nn.meta.unbox(variables))

  @classmethod
  def from_checkpoint(cls, path: str, step: Optional[int] = None,
                      field: str = 'checkpoint', mesh=None) -> 'Tokenizer':
    """path: a train_tokenizer workdir (holds config.json and checkpoints/);
    step: None (or < 0) for the latest; `tok.step` is the step loaded. A bad
    path raises one ValueError naming `config.<field>` and what is wrong."""
    path, step, config = checkpoint.check_workdir(
        path, 'train_tokenizer', -1 if step is None else step, field)
    params, _ = training.restore_params(config, path, step)
    tok = cls(config, params, mesh=mesh)
    tok.step = step
    return tok

  @classmethod
  def from_official(cls, path: str, latent_shape=None, mesh=None
                    ) -> 'Tokenizer':
    """A released VideoFlexTok `model.safetensors` (apple/ml-videoflextok),
    read offline from `path`: its config is parsed safely and mapped onto the
    vftok model (vftok/models/pretrained/official.py), its tensors converted.

    latent_shape: (T, h, w), the default size (detokenize's latent_size,
    streams; default: up to 5 latent frames of 16 x 16 patches, the K600 /
    Panda clips). tokenize takes any size the position tables cover, and
    detokenize any latent_size (non-square included). mesh: put
    each tensor straight into its shards (params sharded by their logical
    axes) instead of on the default device.
    """
    release = official.model_config(official.read_config(path))
    config = official_config(release, path, latent_shape)
    model = tokenizer_lib.build(config.model)
    boxed = jax.eval_shape(model.init, jax.random.key(0),
                           *tokenizer_lib.dummy_inputs(config.model))
    abstract = sharding_lib.unbox(boxed)['params']
    if mesh is None:
      put = lambda value, want: jnp.asarray(value)
    else:
      with nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
        shardings = sharding_lib.state_shardings(boxed, mesh)['params']
      put = lambda value, want: jax.device_put(value, want.sharding)
      abstract = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          abstract, shardings)
    params = official.convert_tensors(path, release, abstract, put)
    # The mesh lays the params out (FSDP-style); batches are not split.
    tok = cls(config, {'params': params})
    if official.has_vae_tensors(path):  # the release ships VidTok inside
      from vftok.models.pretrained import vidtok  # pylint: disable=g-import-not-at-top
      tok.vae = vidtok.VidTok.load(path)
    return tok

  # ---- shapes -------------------------------------------------------------
  @property
  def latent_shape(self):
    m = self.config.model
    return (m.latent_frames, *m.latent_size, m.latent_channels)

  @property
  def tokens_per_frame(self) -> int:
    return self.config.model.tokens_per_frame

  def _check_latents(self, latents, native_size: bool = False):
    """Any (T, H, W) the model covers (latent_grid_error); native_size: only
    the config's (H, W) (a stream's cache is sized for it)."""
    latents = np.asarray(latents)
    _, h, w, c = self.latent_shape
    if latents.ndim != 5:
      raise ValueError(f'latents must be [B, T, H, W, C], got shape {latents.shape}')
    if latents.shape[-1] != c:
      raise ValueError(f'latents have {latents.shape[-1]} channels; this '
                       f'tokenizer expects {c}')
    if native_size and latents.shape[2:4] != (h, w):
      raise ValueError(f'latent frames are {latents.shape[2:4]}; this stream '
                       f'takes {(h, w)}')
    err = tokenizer_lib.latent_grid_error(self.config.model, latents.shape[1:4])
    if err:
      raise ValueError(f'latents of shape {latents.shape}: {err}')
    if not np.all(np.isfinite(latents)):
      raise ValueError('latents contain NaN or Inf values')
    return latents.astype(np.float32)

  # ---- tokenize / detokenize ---------------------------------------------
  @functools.partial(jax.jit, static_argnums=0)
  def _encode(self, params, latents):
    codes, _ = self.model_for(latents.shape[2:4]).apply(
        params, latents, method=tokenizer_lib.VideoFlexTok.encode)
    return fsq.codes_to_indices(codes, self.levels)

  def _put(self, x):
    """A host array (every process holds all of it) -> the batch split over
    the mesh; unchanged without a mesh or when already a jax.Array."""
    if self.mesh is None or x is None or isinstance(x, jax.Array):
      return x
    return sharding_lib.put_global(np.asarray(x),
                                   sharding_lib.batch_sharding(self.mesh))

  def tokenize(self, latents) -> jax.Array:
    """float latents [B, T, H, W, C] -> int32 tokens [B, T, K]."""
    return self._encode(self.params, self._put(self._check_latents(latents)))

  def clip_noise(self, ids, seed: int = 0) -> jax.Array:
    """Initial noise [len(ids), T, H, W, C] for detokenize(noise=...): per
    clip id (clip_noise), split over the mesh like the batch."""
    ids = self._put(np.asarray(ids, np.int32))
    fn = functools.partial(clip_noise, seed, shape=self.latent_shape)
    if self.mesh is None:
      return jax.jit(fn)(ids)
    return jax.jit(fn, out_shardings=sharding_lib.batch_sharding(self.mesh))(
        ids)

  @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
  def _decode(self, params, codes, keep, steps, guidance, time_shift, noise,
              first_frame):
    """detokenize's compiled core: Euler integration from the given noise
    [B, T, H, W, C]. codes [B, T, k, D]; keep bool [B, K] or [B, T, K]
    (False: mask token) or None (the truncated form: only the k given
    registers enter the decoder); guidance: a flow.Guidance; first_frame
    [B, 1, H, W, C] or None (see detokenize).
    """
    b = codes.shape[0]
    model = self.model_for(noise.shape[2:4])

    def velocity(x, t, null):
      # 2B rows (guidance in one pass): the clips' conditions twice.
      rows = lambda a: None if a is None else jnp.concatenate(
          [a] * (x.shape[0] // b))
      prefix = (None if first_frame is None
                else jnp.ones((x.shape[0],), jnp.int32))
      # A distilled student is told how many steps it takes.
      step_count = (jnp.full((x.shape[0],), steps) if self.is_distilled
                    else None)
      v, _ = model.apply(params, rows(codes), x, t, rows(keep), null, prefix,
                         step_count, method=tokenizer_lib.VideoFlexTok.decode)
      return v

    one_pass = flow.one_pass(
        (self.config.get('sample') or {}).get('guidance_passes', 'auto'),
        jax.default_backend())

    return flow.euler_sample(velocity, noise, steps, guidance, time_shift,
                             first_frame=first_frame, one_pass=one_pass)

  def sample_defaults(self, sampler: Optional[str] = None) -> dict:
    """detokenize's defaults: the config's `sample` block (the release
    notebook's settings unless the config says otherwise); a distilled
    student's: config.distill.steps, no guidance (it is distilled in), and
    for sampler='teacher' its `sample` block: the sampler it was distilled
    from."""
    return tokenizer_lib.sample_settings(self.config, sampler)

  # ---- a distilled student and its teacher ----------------------------------
  @property
  def is_distilled(self) -> bool:
    """A few-step student (configs/demo.py:distill; models/distill.py)."""
    return tokenizer_lib.is_distilled(self.config.model)

  @property
  def student_steps(self):
    """The step counts a distilled student was trained for; () otherwise."""
    if not self.is_distilled:
      return ()
    return tuple(int(v) for v in self.config.distill.student_steps)

  def teacher(self) -> 'Tokenizer':
    """A distilled student's teacher: the tokenizer in its
    config.train.init_from (loaded once, on the same mesh)."""
    if not self.is_distilled:
      raise ValueError('teacher(): this tokenizer is not a distilled student')
    if self._teacher is None:
      self._teacher = Tokenizer.from_checkpoint(
          self.config.train.init_from, field='train.init_from (the teacher '
          'of this distilled student)', mesh=self.mesh)
    return self._teacher

  def _check_student(self, steps: int, guidance_scale: float, first_frame):
    if steps not in self.student_steps:
      raise ValueError(
          f'steps={steps}: this distilled decoder was trained for '
          f'{self.student_steps} steps; pass one of those, or '
          "sampler='teacher' for the teacher's sampler")
    if guidance_scale != 1.0:
      raise ValueError(
          f'guidance_scale={guidance_scale:g}: a distilled student has its '
          "teacher's guidance distilled in (scale 1, one pass per step); "
          "sampler='teacher' guides the teacher")
    if first_frame is not None:
      raise ValueError("first_frame=: the student was distilled without "
                       "frame conditioning; use sampler='teacher'")

  def detokenize(self, tokens, steps: Optional[int] = None,
                 guidance_scale: Optional[float] = None, seed: int = 0, *,
                 noise=None, guidance: Optional[str] = None,
                 apg_momentum: Optional[float] = None,
                 apg_eta: Optional[float] = None,
                 apg_norm_threshold: Optional[float] = None,
                 time_shift: Optional[float] = None,
                 first_frame=None, pad_with_mask_token: bool = True,
                 latent_size=None, budgets=None,
                 sampler: Optional[str] = None) -> jax.Array:
    """int tokens [B, T, k], 1 <= k <= K -> latents [B, T, H, W, C].

    budgets: tokens kept per clip [B] or per latent frame [B, T] (each in
    [1, k]); the rest of each frame is the mask token, as in training, and
    token ids past a frame's budget are ignored (e.g. -1 padding). Default:
    all k of every frame.

    latent_size (H, W): the latent frame size to decode (tokens do not
    carry it; any size the model covers, see latent_grid_error); default:
    the noise's when given, else the config's (the release's
    vae_video_sizes).

    pad_with_mask_token (default, how the models are trained): registers
    k..K-1 are the learned mask token, so fewer tokens give a coarser
    reconstruction; False: only the k registers enter the decoder (a shorter
    sequence; the release README's form). noise [B, T, H, W, C]: the initial
    noise (default: drawn from `seed`), to reproduce a given sampling run.

    Unset arguments come from `sample_defaults()`. guidance_scale != 1 guides
    against the learned null condition: guidance='cfg' (classifier-free) or
    'apg' (adaptive projected guidance with apg_momentum / apg_eta /
    apg_norm_threshold; see flow.Guidance). time_shift: Euler time-grid shift
    (default: config.sample.time_shift, else the model's training shift).
    first_frame [B, H, W, C] or
    [B, 1, H, W, C]: decode conditioned on this clean first latent frame
    (decoders fine-tuned with frame conditioning, stage 2); the output's
    frame 0 is exactly it.

    sampler: a distilled student decodes in its few steps ('student', its
    default: steps from its trained step counts, unguided); 'teacher' runs
    its teacher's decoder, unset arguments from the sampler it was distilled
    from (sample_defaults('teacher')); the tokens are the same (the encoder
    is the teacher's).
    """
    if sampler not in (None, 'student', 'teacher'):
      raise ValueError(f"sampler={sampler!r}: choose 'student' or 'teacher'")
    if sampler == 'teacher' and self.is_distilled:
      # Unset arguments: the sampler the student was distilled from.
      d = self.sample_defaults('teacher')
      pick = lambda v, key: d[key] if v is None else v
      return self.teacher().detokenize(
          tokens, pick(steps, 'steps'), pick(guidance_scale, 'guidance_scale'),
          seed, noise=noise, guidance=pick(guidance, 'guidance'),
          apg_momentum=pick(apg_momentum, 'apg_momentum'),
          apg_eta=pick(apg_eta, 'apg_eta'),
          apg_norm_threshold=pick(apg_norm_threshold, 'apg_norm_threshold'),
          time_shift=pick(time_shift, 'time_shift'),
          first_frame=first_frame, pad_with_mask_token=pad_with_mask_token,
          latent_size=latent_size, budgets=budgets)
    if sampler == 'student' and not self.is_distilled:
      raise ValueError("sampler='student': this tokenizer is not a distilled "
                       'student (configs/demo.py:distill makes one)')
    d = self.sample_defaults()
    pick = lambda v, key: d[key] if v is None else v
    steps = int(pick(steps, 'steps'))
    tokens = np.asarray(tokens)
    k_max = self.tokens_per_frame
    if tokens.ndim != 3:
      raise ValueError(f'tokens must be [B, T, k], got shape {tokens.shape}')
    b, t, k = tokens.shape
    err = tokenizer_lib.budget_error(self.config.model, k)
    if err:
      raise ValueError(f'tokens of shape {tokens.shape}: {err}')
    if steps < 1:
      raise ValueError(f'steps must be >= 1, got {steps}')
    if self.is_distilled:
      self._check_student(steps, float(pick(guidance_scale, 'guidance_scale')),
                          first_frame)
    keep = None
    if budgets is not None:     # k per clip or per latent frame
      if not pad_with_mask_token:
        raise ValueError('budgets= pads with the mask token: it needs '
                         'pad_with_mask_token=True')
      per_frame = self._check_budgets(budgets, b, t, k)
      keep = np.arange(k_max)[None, None, :] < per_frame[:, :, None]
      # Positions past a frame's budget may hold anything (-1 padding).
      tokens = np.where(keep[:, :, :k], tokens, 0)
    codes = fsq.indices_to_codes(tokens, self.levels)  # validates the id range
    if pad_with_mask_token:
      codes = jnp.pad(codes, ((0, 0), (0, 0), (0, k_max - k), (0, 0)))
      if keep is None:
        keep = tokenizer_lib.keep_first(k, b, k_max)
    pt = self.config.model.patch_size[0]
    if latent_size is None:
      latent_size = (np.shape(noise)[2:4] if noise is not None
                     and np.ndim(noise) == 5 else self.latent_shape[1:3])
    hw = tuple(int(v) for v in latent_size)
    err = tokenizer_lib.latent_grid_error(self.config.model, (t * pt, *hw))
    if err:
      raise ValueError(f'tokens of shape {tokens.shape} at latent_size {hw}: '
                       f'{err}')
    if first_frame is not None:
      first_frame = self._check_first_frame(first_frame, b, hw)
    g = flow.Guidance.from_settings(dict(
        guidance_scale=pick(guidance_scale, 'guidance_scale'),
        guidance=pick(guidance, 'guidance'),
        apg_momentum=pick(apg_momentum, 'apg_momentum'),
        apg_eta=pick(apg_eta, 'apg_eta'),
        apg_norm_threshold=pick(apg_norm_threshold, 'apg_norm_threshold')))
    shift = float(pick(time_shift, 'time_shift'))
    shape = (b, t * pt, *hw, self.latent_shape[-1])
    if noise is None:
      noise = jax.random.normal(jax.random.key(seed), shape)
    elif not isinstance(noise, jax.Array):  # a global array stays on device
      noise = np.asarray(noise, np.float32)
    if tuple(noise.shape) != shape:
      raise ValueError(f'noise must be [B, T, H, W, C] = {shape}, got '
                       f'{tuple(noise.shape)}')
    if self.mesh is not None:  # host arrays, split over the mesh by _put
      codes, keep = np.asarray(codes), None if keep is None else np.asarray(
          keep)
    return self._decode(self.params, self._put(codes), self._put(keep),
                        steps, g, shift, self._put(noise),
                        self._put(first_frame))

  def _check_budgets(self, budgets, b: int, t: int, k: int) -> np.ndarray:
    """budgets [B] or [B, T] -> int [B, T], each a budget the tokenizer
    decodes at and at most the k tokens given."""
    budgets = np.asarray(budgets)
    if not np.issubdtype(budgets.dtype, np.integer):
      raise ValueError(f'budgets must be integers, got {budgets.dtype}')
    if budgets.shape == (b,):
      budgets = np.broadcast_to(budgets[:, None], (b, t))
    if budgets.shape != (b, t):
      raise ValueError(f'budgets must be [B] = ({b},) or [B, T] = ({b}, {t}) '
                       f'(tokens {b} x {t} x {k}), got {budgets.shape}')
    for n in np.unique(budgets):
      err = tokenizer_lib.budget_error(self.config.model, int(n), limit=k)
      if err:
        raise ValueError(f'budgets: {err}')
    return budgets

  def _check_first_frame(self, frame, batch: int, hw):
    frame = np.asarray(frame, np.float32)
    (h, w), c = hw, self.latent_shape[-1]
    if frame.ndim == 4:
      frame = frame[:, None]
    if frame.shape != (batch, 1, h, w, c):
      raise ValueError(f'first_frame must be [B, H, W, C] = {(batch, h, w, c)} '
                       f'(one clean latent frame per clip), got {frame.shape}')
    if self.config.model.patch_size[0] != 1:
      raise ValueError('first-frame conditioning needs time patch size 1')
    m = self.config.model
    if not tokenizer_lib.has_frame_conditioning(m):
      raise ValueError('first_frame= needs a decoder trained with frame '
                       'conditioning (stage 2, config.model.first_frame_prob '
                       '> 0); this one was not')
    if not np.all(np.isfinite(frame)):
      raise ValueError('first_frame contains NaN or Inf values')
    return frame

  # ---- pixels (with a VAE) --------------------------------------------------
  def _need_vae(self):
    if self.vae is None:
      raise ValueError('this tokenizer has no VAE: load one (tok.vae = '
                       'vftok.VidTok.load(path); from_official attaches the '
                       "release's own) to work on pixels")
    norm = self.config.data.get('normalize', 'none')
    if norm != 'none':
      raise ValueError(f'config.data.normalize={norm!r}: encode_video / '
                       'decode_video feed raw VAE latents (normalize="none", '
                       'as the release); normalise latents yourself otherwise')

  @functools.partial(jax.jit, static_argnums=(0,))
  def _encode_pixels(self, params, vae_params, frames):
    """uint8 frames [B, F, H, W, 3] -> tokens: the VAE's posterior mean and
    the encoder as one program per clip shape."""
    from vftok.models.pretrained import vidtok  # pylint: disable=g-import-not-at-top
    video = frames.astype(jnp.float32) / 127.5 - 1.0
    latents, _ = vidtok._moments(self.vae.cfg, vae_params, video)  # pylint: disable=protected-access
    codes, _ = self.model_for(latents.shape[2:4]).apply(
        params, latents, method=tokenizer_lib.VideoFlexTok.encode)
    return fsq.codes_to_indices(codes, self.levels)

  def _check_frames(self, frames):
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError(f'frames must be uint8 [B, F, H, W, 3], got '
                       f'{frames.dtype} {frames.shape}')
    return frames

  def encode_video(self, frames) -> np.ndarray:
    """uint8 frames [B, F, H, W, 3] -> int32 tokens [B, T, K] through the
    VAE (its posterior mean). F = 17 (one clip, T = 5 latent frames) or any
    4n + 1 >= 17: 17-frame chunks sharing one frame (tokenize_long)."""
    self._need_vae()
    frames = self._check_frames(frames)
    clip = chunks_lib.CHUNK_FRAMES
    if frames.shape[1] <= clip:
      return np.asarray(self._encode_pixels(self.params, self.vae.params,
                                            frames))
    chunks = chunks_lib.split_frames(frames)
    latents = [np.asarray(self.vae.encode(c.astype(np.float32) / 127.5 - 1))
               for c in chunks]
    return self.tokenize_long(latents)

  def decode_video(self, tokens, **detokenize_kwargs) -> np.ndarray:
    """int tokens [B, T, k] -> uint8 frames [B, F, H, W, 3] (detokenize, then
    the VAE decoder). More latent frames than one clip holds: the long-video
    path, each later chunk conditioned on the previous chunk's last decoded
    frame re-encoded by the VAE (a stage-2 decoder)."""
    self._need_vae()
    tokens = np.asarray(tokens)
    to_uint8 = lambda v: np.asarray(jnp.clip(jnp.round((v + 1.0) * 127.5),
                                             0, 255)).astype(np.uint8)
    if tokens.ndim == 3 and tokens.shape[1] <= self.config.model.latent_frames:
      return to_uint8(self.vae.decode(self.detokenize(tokens,
                                                      **detokenize_kwargs)))

    # detokenize_long hands over each chunk (but the last) in order, to
    # re-encode its last frame: keep that chunk's pixels, not decode it twice.
    videos = []

    def reencode(chunk_latents):
      videos.append(np.asarray(self.vae.decode(chunk_latents)))
      return np.asarray(self.vae.encode(np.clip(videos[-1][:, -1:], -1.0, 1.0)))
    chunks = self.detokenize_long(tokens, reencode, **detokenize_kwargs)
    videos.append(np.asarray(self.vae.decode(chunks[-1])))
    return chunks_lib.stitch_frames([to_uint8(v) for v in videos])

  # ---- streaming and long videos -------------------------------------------
  def stream(self, batch: int = 1, max_frames: Optional[int] = None
             ) -> streaming.TokenStream:
    """A streaming tokenizer: push one latent frame at a time, get its K
    tokens (identical to `tokenize` on the whole clip; see streaming.py)."""
    tokenizer_lib.require_time_causal(self.config.model, 'streaming')
    max_frames = max_frames or self.config.model.max_frames
    return streaming.TokenStream(self, batch, max_frames)

  def choose_budget(self, latents, **target):
    """-> (tokens [B, T, K], budgets [B] or [B, T]): the fewest tokens per
    clip (per_frame=True: per latent frame) whose one-step mean meets
    target_psnr / target_mse / fraction in latent space, or the
    rate-distortion pick for db_per_token (budgets.py); decode with
    detokenize(tokens, budgets=budgets), and pass that decode's noise as
    noise= where it is known (the budgets are then chosen for it)."""
    return budgets_lib.choose_budget(self, latents, **target)

  def tokenize_long(self, chunk_latents):
    """Latents of a long video's overlapping chunks -> tokens [B, F, K]; see
    long_video.py (F = latent frames of the whole video)."""
    tokenizer_lib.require_time_causal(self.config.model, 'a long video')
    return long_video.tokenize_long(self, chunk_latents)

  def detokenize_long(self, tokens, reencode_last_frame, **kwargs):
    """tokens [B, F, k] of `tokenize_long` -> per-chunk latents; chunk i > 0 is
    decoded conditioned on chunk i - 1's last decoded frame. See long_video.py."""
    tokenizer_lib.require_time_causal(self.config.model, 'a long video')
    return long_video.detokenize_long(self, tokens, reencode_last_frame, **kwargs)
