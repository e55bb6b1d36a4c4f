"""Conditions -> AR tokens -> tokenizer latents -> pixels -> PNG / GIF / MP4.

Shared by the AR trainer's periodic samples and the sample_ar job:

  * `sample_tokens`: for each token budget n, one batched, KV-cached (or
    recomputing) `ar_sampling.sample` call over every condition x sample,
    timed (tokens/s);
  * `Decoder`: the tokenizer's flow decoder (latents) and the data's codec
    (pixels), with the latent de-normalisation the tokens were made with;
  * `write_outputs`: a grid PNG (one row per condition x budget) and, per
    budget, an animated grid (rows: conditions, columns: samples).
"""
import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vftok import training
from vftok.api import long_video
from vftok.models import ar_sampling
from vftok.evals import media
from vftok.models import latent_codecs
from vftok.data import pipeline
from vftok.data import records
from vftok.evals import reconstruction


@dataclasses.dataclass(frozen=True)
class Condition:
  """One prompt: a class id or a caption (or neither: unconditional)."""
  name: str
  class_label: Optional[int] = None
  caption: Optional[str] = None


def class_conditions(labels: Sequence[int], names: Sequence[str] = ()
                     ) -> List[Condition]:
  return [Condition(names[c] if c < len(names) else f'class {c}', int(c))
          for c in labels]


def caption_conditions(captions: Sequence[str]) -> List[Condition]:
  return [Condition(f'caption {i}', caption=str(c))
          for i, c in enumerate(captions)]


def conditions(mc, *, classes: Sequence[int] = (),
               captions: Sequence[str] = (), class_names: Sequence[str] = (),
               default_classes=(), default_captions=(), field: str = 'config'
               ) -> List[Condition]:
  """The rows to sample for AR model config `mc`: one per class (class
  models), one per caption (text models), else one unconditional row.

  classes / captions (`field`.classes / .captions) are checked against the
  model; when empty, the defaults are used (a sequence, or a callable that
  returns one: e.g. the captions of the evaluation clips); a class model
  without either samples every class.
  """
  classes, captions = tuple(classes), tuple(captions)
  if classes and not mc.num_classes:
    raise ValueError(f'{field}.classes given but the AR model is not class-'
                     'conditioned (model.num_classes = 0)')
  if captions and not mc.text_dim:
    raise ValueError(f'{field}.captions given but the AR model is not text-'
                     'conditioned (model.text_dim = 0)')
  given = lambda d: tuple(d() if callable(d) else d)
  if mc.num_classes:
    classes = classes or given(default_classes) or tuple(
        range(mc.num_classes))
    bad = [c for c in classes if not 0 <= int(c) < mc.num_classes]
    if bad:
      raise ValueError(f'{field}.classes {bad} are outside [0, '
                       f'{mc.num_classes})')
    return class_conditions(classes, tuple(class_names))
  if mc.text_dim:
    captions = captions or tuple(dict.fromkeys(given(default_captions)))
    if not captions:
      raise ValueError(f'a text-conditioned model needs {field}.captions')
    return caption_conditions(captions)
  return [Condition('uncond')]


def sample_tokens(model, params, conditions: Sequence[Condition],
                  budgets: Sequence[int], samples: int, *, seed: int,
                  num_frames: int, order: str = 'time_first',
                  embed_captions=None, cfg_scale: float = 1.0,
                  temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, use_kv_cache: bool = True,
                  given: Optional[Dict[int, np.ndarray]] = None,
                  total_frames: int = 0, overlap_frames: int = 0
                  ) -> Tuple[Dict[int, np.ndarray], Dict[int, float]]:
  """-> ({n: int32 [C, samples, T, n]}, {n: seconds of the sample call}).

  params: the (unboxed) 'params' tree. embed_captions: captions ->
  (emb, mask) for caption conditions (text_encoders.CaptionEmbedder).
  given: {n: int [samples, T, n]}, the tokens each sample keeps at budget n
  (-1: sampled), the same for every condition (ar_sampling.sample's given).
  total_frames > num_frames: past the model's window by sliding it
  (ar_sampling.sample_long; overlap_frames of context, default half).
  """
  if given is not None and any(np.shape(g)[0] != samples
                               for g in given.values()):
    raise ValueError(f'given tokens must have {samples} rows (one per sample)')
  kwargs = condition_kwargs(conditions, samples, embed_captions)
  tokens, seconds = {}, {}
  for n in budgets:
    start = time.perf_counter()
    keep = None
    if given is not None:   # every condition keeps the same tokens
      keep = np.tile(np.asarray(given[n]), (len(conditions), 1, 1))
    settings = dict(tokens_per_frame_budget=int(n), order=order,
                    cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                    top_p=top_p, use_kv_cache=use_kv_cache, **kwargs)
    rng = jax.random.fold_in(jax.random.key(seed), n)
    if total_frames > num_frames:
      out = ar_sampling.sample_long(
          model, params, rng, total_frames=total_frames,
          window_frames=num_frames, given=_leading_frames(keep),
          overlap_frames=overlap_frames or num_frames // 2, **settings)
    else:
      out = ar_sampling.sample(model, params, rng, num_frames=num_frames,
                               given=keep, **settings)
    out = np.asarray(jax.block_until_ready(out))
    seconds[n] = time.perf_counter() - start
    tokens[n] = out.reshape(len(conditions), samples, *out.shape[1:])
  return tokens, seconds


def condition_kwargs(conditions: Sequence[Condition], samples: int,
                     embed_captions=None) -> dict:
  """The sampler's condition arguments for every condition x sample row:
  class_labels, text_emb / text_mask, or batch_size (unconditional)."""
  kwargs = {}
  rows = [c for c in conditions for _ in range(samples)]
  if any(c.class_label is not None for c in rows):
    kwargs['class_labels'] = jnp.asarray([c.class_label for c in rows],
                                         jnp.int32)
  if any(c.caption is not None for c in rows):
    if embed_captions is None:
      raise ValueError('caption conditions need a text encoder')
    emb, mask = embed_captions([c.caption for c in rows])
    kwargs['text_emb'], kwargs['text_mask'] = jnp.asarray(emb), jnp.asarray(
        mask)
  if not kwargs:
    kwargs['batch_size'] = len(rows)
  return kwargs


def sample_auto_tokens(model, params, conditions: Sequence[Condition],
                       samples: int, *, seed: int, num_frames: int,
                       max_budget: int, entropy_threshold: float,
                       min_budget: int = 1, embed_captions=None,
                       cfg_scale: float = 1.0, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0):
  """AR-chosen budgets (ar_sampling.sample_auto) for every condition x
  sample -> (tokens int32 [C, S, T, max_budget], -1 past each budget;
  budgets int [C, S])."""
  tokens, budgets = ar_sampling.sample_auto(
      model, params, jax.random.key(seed), num_frames=num_frames,
      max_budget=max_budget, entropy_threshold=entropy_threshold,
      min_budget=min_budget, cfg_scale=cfg_scale, temperature=temperature,
      top_k=top_k, top_p=top_p,
      **condition_kwargs(conditions, samples, embed_captions))
  c = len(conditions)
  return (tokens.reshape(c, samples, *tokens.shape[1:]),
          budgets.reshape(c, samples))


def _leading_frames(keep):
  """Given tokens [B, T, n] (-1: sampled) -> the whole leading frames they
  fix [B, f, n] (what sample_long continues), or None."""
  if keep is None:
    return None
  known = keep >= 0
  f = int(known[0].all(axis=-1).sum())
  if not np.array_equal(known, np.broadcast_to(
      (np.arange(keep.shape[1]) < f)[None, :, None], known.shape)):
    raise ValueError('past one window only whole leading latent frames can '
                     'be given (image-to-video, continuation)')
  return keep[:, :f]


def latent_data(ar_config, tokenizer) -> pipeline.Data:
  """The latent set the tokenizer was trained on: its codec maps latents to
  pixels and its stats undo the normalisation the tokens were made with.

  ar_config.tokenizer.latent_dir (a latent-record dir with manifest.json)
  overrides it. Tokenizer data fields added to the code after its checkpoint
  was written take their current defaults (as eval_tokenizer does).
  """
  tok_data = tokenizer.config.data
  latent_dir = ar_config.tokenizer.get('latent_dir', '')
  if latent_dir:
    manifest = records.read_manifest(latent_dir)
    codec_path = manifest.get('codec_path', '')
    return pipeline.Data('', '', manifest, manifest.get('codec', ''),
                         os.path.join(latent_dir, codec_path)
                         if codec_path else '',
                         tok_data.get('normalize', 'global'))
  d = ar_config.data
  return training.resolve_saved_data(
      tok_data, root=d.get('root'),
      demo_repa_teacher=d.get('demo_repa_teacher'))


class Decoder:
  """AR tokens [B, T, n] -> uint8 pixels [B, F, H, W, 3]. More latent frames
  than one tokenizer clip (a long-video model, sample_long): chunk by chunk
  through Tokenizer.detokenize_long, each later chunk conditioned on the
  previous chunk's last decoded frame re-encoded by the codec (a stage-2
  decoder), the pixels stitched at the shared frames."""

  def __init__(self, tokenizer, data: pipeline.Data, steps: int = 25,
               guidance_scale: float = 1.0, seed: int = 0):
    self.tokenizer = tokenizer
    self.codec = latent_codecs.load_codec(data)
    self.normalize = pipeline.make_normalizer(data)
    self.denormalize = pipeline.make_denormalizer(data)
    self.steps, self.guidance_scale, self.seed = steps, guidance_scale, seed

  def to_pixels(self, latents) -> np.ndarray:
    return media.to_uint8(self.codec.decode(self.denormalize(
        np.asarray(latents))))

  def __call__(self, tokens, budgets=None) -> np.ndarray:
    """budgets [B] or [B, T]: tokens kept per clip / frame (-1 past them;
    Tokenizer.detokenize(budgets=)); one clip length only."""
    return long_video.decode_pixels(
        self.tokenizer, tokens, self.to_pixels,
        long_video.codec_reencoder(self.codec, self.normalize,
                                   self.denormalize), budgets=budgets,
        steps=self.steps, guidance_scale=self.guidance_scale, seed=self.seed)


def decode_all(decoder, tokens: Dict[int, np.ndarray]
               ) -> Dict[int, np.ndarray]:
  """{n: [C, S, T, n]} -> {n: uint8 [C, S, F, H, W, 3]} (one decode per n)."""
  out = {}
  for n, tok in tokens.items():
    c, s = tok.shape[:2]
    px = decoder(tok.reshape(c * s, *tok.shape[2:]))
    out[n] = px.reshape(c, s, *px.shape[1:])
  return out


def write_outputs(directory: str, prefix: str,
                  conditions: Sequence[Condition],
                  pixels: Dict[int, np.ndarray], *, fps: float = 8.0,
                  formats: Sequence[str] = ('gif',), scale: int = 2
                  ) -> List[str]:
  """<prefix>.png: one row per condition x budget (evenly spaced frames of
  every sample); <prefix>_n<n>.<fmt>: per budget, the animated grid of
  conditions (rows) x samples (columns), enlarged `scale` x;
  <prefix>.txt: the conditions of the rows. -> the written paths."""
  records.makedirs(directory)
  budgets = sorted(pixels)
  rows, labels = [], []
  for i, cond in enumerate(conditions):
    for n in budgets:
      rows.append(pixels[n][i])
      labels.append(f'{cond.name[:9]} n={n}')
  samples = rows[0].shape[0]
  # PIL's default font is ~6 px per character.
  grid = reconstruction.make_grid(
      rows, labels, clips=samples, frames_per_clip=min(5, rows[0].shape[1]),
      label_width=max(64, 6 * max(map(len, labels)) + 8))
  paths = [os.path.join(directory, f'{prefix}.png')]
  with records.atomic_path(paths[0]) as tmp:
    Image.fromarray(grid).save(tmp, format='PNG')
  for n in budgets:
    video = media.upscale(media.tile(pixels[n]), scale)
    paths += media.write_video(os.path.join(directory, f'{prefix}_n{n}'),
                               video, fps, formats)
  text = os.path.join(directory, f'{prefix}.txt')
  with records.atomic_path(text) as tmp, open(tmp, 'w') as f:
    for cond in conditions:
      what = (f'caption: {cond.caption}' if cond.caption is not None else
              f'class: {cond.class_label}' if cond.class_label is not None
              else 'unconditional')
      f.write(f'{cond.name}\t{what}\n')
    f.write(f'budgets (tokens per latent frame): {budgets}\n')
  return paths + [text]
