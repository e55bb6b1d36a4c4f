"""Class -> video and text -> video from a trained AR workdir, end to end.

    python -m vftok.main --config=configs/sample_ar.py --workdir=OUT \
      --config.ar_workdir=/tmp/ar_demo --config.classes='(0, 1, 2, 3)' \
      --config.budgets='(1, 4, 16)' --config.cfg_scale=2.0 --config.benchmark

    # text-conditioned workdirs take captions instead:
    #   --config.captions="('a man talking in a moving car',)"

Conditions -> AR tokens (KV cache, CFG, temperature / top-k / top-p, n
tokens per latent frame) -> the tokenizer's flow decoder (latents) -> the
codec (pixels) -> OUT/<prefix>.png (one row per condition x budget),
OUT/<prefix>_n<n>.mp4 / .gif (per budget: conditions x samples, animated),
OUT/<prefix>.npz (tokens) and OUT/<prefix>.json (settings, tokens/s, paths).
With benchmark=True the sampling speed is measured with and without the KV
cache, each after a compiling warm-up call. With given.clips the samples
start from those held-out clips' tokens (`given_tokens`): image-to-video and
continuation (given.frames) or an edit that keeps every frame's first tokens
(given.tokens); the PNG's first row shows the clips. With seconds > the
model's window the AR window slides (ar_sampling.sample_long, overlap_frames
of context) and the video decodes chunk by chunk (a stage-2 decoder). With
auto_budget.entropy_threshold > 0 the AR also chooses each sample's budget
(ar_sampling.sample_auto): <prefix>_auto.* and the budgets in the report.
"""
import json
import os
from typing import Dict

from absl import logging
import jax
import numpy as np

from vftok import sharding
from vftok import api
from vftok.api import generator
from vftok import checkpoint
from vftok import errors
from vftok import training
from vftok.models.pretrained import text_encoders
from vftok.data import chunks
from vftok.data import pipeline
from vftok.data import records
from vftok.evals import media
from vftok.models import ar
from vftok.models import tokenizer as tokenizer_lib


def _step(value):
  return None if value is None or int(value) < 0 else int(value)


def total_latent_frames(seconds: float, fps: float, window: int) -> int:
  """Latent frames of `seconds` of video at `fps` (4n + 1 pixel frames, the
  causal VAE's), or the model's window when seconds is 0."""
  if seconds <= 0:
    return window
  frames = 4 * max(1, round((seconds * fps - 1) / 4)) + 1
  return chunks.latent_frames(frames)


def check_given(g, budgets, num_frames: int):
  """config.given: clips with exactly one of frames / tokens, each of which
  leaves something to sample at every budget."""
  if not g.clips:
    if g.frames or g.tokens:
      raise errors.InputError('config.given.frames / .tokens need '
                              'config.given.clips (the clips to start from)')
    return
  if bool(g.frames) == bool(g.tokens):
    raise errors.InputError(
        'config.given.clips needs exactly one of given.frames (keep the first '
        'latent frames: image-to-video, continuation) and given.tokens (keep '
        "every frame's first tokens: an edit)")
  if min(g.clips) < 0:
    raise errors.InputError(f'config.given.clips={tuple(g.clips)}: clip '
                            'indices are >= 0')
  if not 0 <= g.frames < num_frames:
    raise errors.InputError(f'config.given.frames={g.frames}: keep 1 to '
                            f'{num_frames - 1} of the {num_frames} latent '
                            'frames (all of them leave nothing to sample)')
  if g.tokens < 0 or (g.tokens and g.tokens >= budgets[0]):
    raise errors.InputError(
        f'config.given.tokens={g.tokens}: keeps every token at budget '
        f'{budgets[0]}; choose budgets above it (config.budgets={budgets})')


def given_tokens(g, tok, data: pipeline.Data, budgets, samples: int):
  """-> ({n: int32 [clips * samples, T, n], -1 where sampled}, the clips'
  frames uint8 [clips, F, H, W, 3], their labels) for config.given."""
  if g.frames:
    tokenizer_lib.require_time_causal(tok.config.model,
                                      'image-to-video / continuation')
  clips = [int(i) for i in g.clips]
  count, ds = pipeline.eval_dataset(data, num_clips=max(clips) + 1,
                                    batch_size=max(clips) + 1)
  if max(clips) >= count:
    raise errors.InputError(f'config.given.clips={tuple(clips)}: the '
                            f'tokenizer\'s evaluation set has {count} clips')
  batch = ds[0]
  tokens = np.asarray(tok.tokenize(batch['latents'][clips]))
  tokens = np.repeat(tokens, samples, axis=0)
  given = {}
  for n in budgets:
    keep = np.full(tokens[:, :, :n].shape, -1, np.int32)
    if g.frames:
      keep[:, :g.frames] = tokens[:, :g.frames, :n]
    else:
      keep[:, :, :g.tokens] = tokens[:, :, :g.tokens]
    given[n] = keep
  return given, batch['frames'][clips], batch['label'][clips]


def run(config, workdir: str, writer=None) -> Dict:
  """-> the report written to <workdir>/<prefix>.json."""
  del writer  # results go to files
  # Inputs (the AR and tokenizer workdirs, the caption encoder) are loaded
  # before the workdir is made: a missing one is one errors.InputError.
  ar_dir, step, ar_config = checkpoint.check_workdir(
      config.ar_workdir, 'train_ar', config.ar_step, field='ar_workdir')
  mc = ar.ARConfig.from_config_dict(ar_config.model)
  params, step = training.restore_params(ar_config, ar_dir, step)
  params = sharding.single_device(params)
  model = ar.ARTransformer(mc)
  e = ar_config.eval  # default: the AR run's own evaluation prompts
  conditions = generator.conditions(
      mc, classes=config.classes, captions=config.captions,
      class_names=e.get('class_names', ()), default_captions=e.captions,
      default_classes=tuple(e.classes) or tuple(
          range(min(mc.num_classes, e.max_classes))))
  encoder = text_encoders.from_config(ar_config)
  embed = (text_encoders.CaptionEmbedder(encoder, ar_config.text.max_length)
           if encoder is not None else None)

  tok_dir = config.tokenizer_workdir or ar_config.tokenizer.checkpoint
  tok = api.Tokenizer.from_checkpoint(tok_dir, _step(config.tokenizer_step),
                                      field='tokenizer_workdir')
  m = tok.config.model
  num_frames = mc.num_frames   # the AR model's window (latent frames)
  total = total_latent_frames(config.seconds, config.fps, num_frames)
  budgets = tokenizer_lib.check_budgets(m, config.budgets,
                                        limit=mc.tokens_per_frame)
  if int(np.prod(tok.levels)) > mc.vocab_size:
    raise ValueError(f'the tokenizer has {int(np.prod(tok.levels))} codes, '
                     f'the AR vocabulary only {mc.vocab_size}')
  if total > m.latent_frames // m.patch_size[0]:
    tokenizer_lib.require_time_causal(m, 'a long video')
    if not tokenizer_lib.has_frame_conditioning(m):
      raise errors.InputError(
          f'{total} latent frames decode chunk by chunk, each conditioned on '
          'the last frame of the one before: the tokenizer '
          f'{tok_dir!r} has no frame-conditioned decoder (fine-tune one: '
          'configs/demo.py:stage2, configs/tokenizer_k600.py:stage2)')
  check_given(config.given, budgets, num_frames)
  if config.auto_budget.entropy_threshold > 0 and (
      config.given.clips or total > num_frames
      or ar_config.order != 'time_first'):
    raise errors.InputError(
        'config.auto_budget chooses lengths of time-first samples of one '
        'window: not with given.clips, seconds past the window or the '
        f'{ar_config.order!r} order')
  if config.given.tokens and total > num_frames:
    raise errors.InputError(
        'config.given.tokens (an edit of every frame) with config.seconds '
        'past the model\'s window: only given.frames continue past it')
  data = generator.latent_data(ar_config, tok)
  given, source, source_labels = None, None, None
  samples = config.samples
  if config.given.clips:
    given, source, source_labels = given_tokens(config.given, tok, data,
                                                budgets, config.samples)
    samples = len(config.given.clips) * config.samples  # per condition
  records.makedirs(workdir)

  sample = lambda use_kv_cache: generator.sample_tokens(
      model, params['params'], conditions, budgets, samples,
      seed=config.seed, num_frames=num_frames, order=ar_config.order,
      embed_captions=embed, cfg_scale=config.cfg_scale,
      temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
      use_kv_cache=use_kv_cache, given=given, total_frames=total,
      overlap_frames=config.overlap_frames)
  tokens, seconds = sample(True)
  rows = len(conditions) * samples
  count = {n: rows * total * n for n in budgets}
  speed = {'kv_cache_first_call': {n: count[n] / seconds[n]
                                   for n in budgets}}
  if config.benchmark:
    # Warm: the first calls compiled; the KV-cache path is timed again.
    for use_cache, name in ((True, 'kv_cache'), (False, 'no_kv_cache')):
      if not use_cache:
        sample(False)  # compile
      again, secs = sample(use_cache)
      speed[name] = {n: count[n] / secs[n] for n in budgets}
      for n in budgets:
        if not np.array_equal(again[n], tokens[n]) and use_cache:
          raise AssertionError('sampling is not deterministic given the seed')

  decoder = generator.Decoder(tok, data, config.decode_steps,
                              config.decode_guidance, config.seed)
  pixels = generator.decode_all(decoder, tokens)
  shown = conditions
  if source is not None:   # a first row: each column's clip
    clip_row = np.repeat(source, config.samples, axis=0)[None]
    pixels = {n: np.concatenate([clip_row, px]) for n, px in pixels.items()}
    shown = [generator.Condition('given clip')] + list(conditions)
  prefix = config.prefix
  paths = generator.write_outputs(workdir, prefix, shown, pixels,
                                  fps=config.fps,
                                  formats=tuple(config.formats))
  arrays = {f'n{n}': t for n, t in tokens.items()}
  auto = None
  if config.auto_budget.entropy_threshold > 0:
    # The AR chooses each sample's length (ar_sampling.sample_auto), up to
    # the largest budget asked for; decoded at those budgets.
    auto_tokens, auto_k = generator.sample_auto_tokens(
        model, params['params'], conditions, samples, seed=config.seed,
        num_frames=num_frames, max_budget=budgets[-1],
        entropy_threshold=config.auto_budget.entropy_threshold,
        min_budget=config.auto_budget.min_budget, embed_captions=embed,
        cfg_scale=config.cfg_scale, temperature=config.temperature,
        top_k=config.top_k, top_p=config.top_p)
    c, s_ = auto_k.shape
    px = decoder(auto_tokens.reshape(c * s_, *auto_tokens.shape[2:]),
                 budgets=auto_k.reshape(-1))
    paths += media.write_video(
        os.path.join(workdir, f'{prefix}_auto'), media.upscale(media.tile(
            px.reshape(c, s_, *px.shape[1:])), 2), config.fps,
        tuple(config.formats))
    arrays['auto'], arrays['auto_budgets'] = auto_tokens, auto_k
    auto = dict(entropy_threshold=config.auto_budget.entropy_threshold,
                min_budget=config.auto_budget.min_budget,
                max_budget=budgets[-1], budgets=auto_k,
                mean_tokens_per_frame=float(auto_k.mean()))
  with records.atomic_path(os.path.join(workdir, f'{prefix}.npz')) as tmp:
    with open(tmp, 'wb') as f:  # a file object: savez adds no suffix
      np.savez(f, **arrays)
  report = dict(
      ar_workdir=config.ar_workdir, ar_step=step, tokenizer_workdir=tok_dir,
      conditions=[c.__dict__ for c in conditions], budgets=budgets,
      samples_per_condition=samples, num_frames=total,
      window_frames=num_frames,
      given=(dict(clips=list(config.given.clips), frames=config.given.frames,
                  tokens=config.given.tokens, labels=source_labels)
             if given is not None else None),
      cfg_scale=config.cfg_scale, temperature=config.temperature,
      top_k=config.top_k, top_p=config.top_p, seed=config.seed,
      tokens_per_sec=speed, device=str(jax.devices()[0].platform),
      auto_budget=auto, paths=paths)
  with records.atomic_path(os.path.join(workdir, f'{prefix}.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(records.jsonable(report), f, indent=2)
  lines = [f'AR step {step}: {len(conditions)} conditions x {samples} '
           f'samples, {total} latent frames']
  for name, per in speed.items():
    lines.append(f'  tokens/s {name:20s} ' + '  '.join(
        f'n={n}: {v:8.1f}' for n, v in per.items()))
  lines += [f'  wrote {p}' for p in paths]
  print('\n'.join(lines), flush=True)
  logging.info('\n'.join(lines))
  return report
