"""A video file -> a progressive token bitstream -> back, at every prefix.

    python -m vftok.main --config=configs/compress.py \
        --config.video=PATH --workdir=DIR

`num_clips` clips of the tokenizer's clip length (or `num_frames = 4n + 1`
> 17 with a frame-conditioned decoder: 17-frame chunks, tokenize_long) are
read spread over the video, encoded with the tokenizer's codec, tokenized,
and written as api/bitstream.py streams (clip<i>.vftb: token 1 of every
latent frame, then token 2, ..., range-coded). Each stream is then read
back, whole and cut at each level boundary in `levels` (a prefix holding n
tokens per frame), decoded (the config's sampler) to clip<i>_n<n>.mp4, and
scored (PSNR against the clip). compress.md / .json: per n, the bytes of the
prefix per video frame, bits per token and PSNR, beside the VidTok latents
(float16 [T, H/8, W/8, 16], what the tokenizer reads) and the 3D-grid token
count (one 16-bit token per latent patch) per frame. Every file is written
whole or not at all.
"""
import json
import os
import time

from absl import logging
import numpy as np

from vftok import errors
from vftok.api import bitstream
from vftok.api import long_video
from vftok.api import pretrained
from vftok.data import chunks
from vftok.data import records
from vftok.data import video_io
from vftok.evals import media
from vftok.evals import pixels as pixel_metrics
from vftok.models import tokenizer as tokenizer_lib


def _tokens(model, frames):
  """uint8 [N, F, R, R, 3] -> int32 tokens [N, T, K] (long clips per
  17-frame chunk)."""
  if not chunks.is_long(frames.shape[1]):
    return np.asarray(model.tokenizer.tokenize(model.encode(frames)))
  per_chunk = [model.encode(c) for c in chunks.split_frames(frames)]
  return np.asarray(model.tokenizer.tokenize_long(per_chunk))


def _decode(model, tokens, steps, guidance, seed):
  """int tokens [1, T, n] -> uint8 [1, F, R, R, 3]."""
  return long_video.decode_pixels(
      model.tokenizer, tokens, lambda z: media.to_uint8(model.to_pixels(z)),
      long_video.codec_reencoder(model.codec, model.normalize,
                                 model.denormalize),
      steps=steps, guidance_scale=guidance, seed=seed)


def run(config, workdir: str):
  video_io.check_video_job(config, workdir, 'compress')
  t0 = time.time()
  model = pretrained.load(config.tokenizer or pretrained.SMALL64)
  tok = model.tokenizer
  m = tok.config.model
  num_frames = config.num_frames or model.num_frames
  if chunks.is_long(num_frames):
    chunks.chunk_spans(num_frames)            # 4n + 1: one clear error
    tokenizer_lib.require_time_causal(m, 'a long clip')
    if not tokenizer_lib.has_frame_conditioning(m):
      raise errors.InputError(
          f'config.num_frames={num_frames}: a long clip decodes chunk by '
          f'chunk, each conditioned on the one before; {model.source} has no '
          'frame-conditioned decoder (configs/demo.py:stage2 makes one)')
  levels = tokenizer_lib.check_budgets(m, config.levels, field='config.levels')
  frames, starts = video_io.spread_clips(
      os.path.expanduser(config.video), config.num_clips,
      video_io.ClipParams(num_frames=num_frames, resolution=model.resolution))
  tokens = _tokens(model, frames)                       # [N, T, K]
  steps = config.sample_steps or tok.sample_defaults()['steps']
  guidance = config.guidance_scale or tok.sample_defaults()['guidance_scale']
  os.makedirs(workdir, exist_ok=True)

  rows = {n: dict(bytes=[], psnr=[]) for n in levels}
  coders = []
  for i, clip_tokens in enumerate(tokens):
    data = bitstream.encode(clip_tokens, tok.levels)
    path = os.path.join(workdir, f'clip{i}.vftb')
    with records.atomic_path(path) as tmp, open(tmp, 'wb') as f:
      f.write(data)
    with open(path, 'rb') as f:
      data = f.read()
    whole, header = bitstream.decode(data)
    coders.append(header['coder'])
    if not np.array_equal(whole, clip_tokens):
      raise AssertionError(f'{path} does not decode to its tokens')
    ends = bitstream.level_offsets(data)
    for n in levels:
      prefix, _ = bitstream.decode(data[:ends[n - 1]])   # n tokens per frame
      video = _decode(model, prefix[None], steps, guidance, config.seed + i)
      media.write_video(os.path.join(workdir, f'clip{i}_n{n}'), video[0],
                        config.fps, ('mp4',))
      rows[n]['bytes'].append(ends[n - 1])
      rows[n]['psnr'].append(float(np.mean(pixel_metrics.psnr(
          video, frames[i:i + 1]))))

  t_lat = chunks.stored_latent_frames(num_frames)
  h, w = model.resolution // 8, model.resolution // 8
  _, ph, pw = m.patch_size
  baselines = {
      'VidTok latents (float16)': t_lat * h * w * 16 * 2,
      '3D grid tokens (16 bits each)':
          chunks.latent_frames(num_frames) * (h // ph) * (w // pw) * 2,
  }
  lines = [f'{os.path.basename(config.video)}: {len(frames)} clips of '
           f'{num_frames} frames at {model.resolution} px; tokenizer '
           f'{model.source}; decoded with {steps} steps, guidance '
           f'{guidance:g}; coder per clip (the shorter stream, '
           f'api/bitstream.py): {", ".join(coders)}', '',
           '| tokens per latent frame | bytes per video frame | bits per '
           'token | PSNR (dB) |', '|---|---|---|---|']
  token_frames = tokens.shape[1]
  report = dict(video=os.path.abspath(config.video), clip_starts_s=starts,
                tokenizer=model.source, num_frames=num_frames, levels=levels,
                coders=coders,
                rows={}, baselines_bytes_per_frame={})
  for n in levels:
    b = float(np.mean(rows[n]['bytes']))
    row = dict(bytes_per_frame=b / num_frames,
               bits_per_token=8 * b / (token_frames * n),
               psnr=float(np.mean(rows[n]['psnr'])))
    report['rows'][n] = row
    lines.append(f'| {n} | {row["bytes_per_frame"]:.1f} | '
                 f'{row["bits_per_token"]:.2f} | {row["psnr"]:.2f} |')
  lines += ['', '| baseline | bytes per video frame |', '|---|---|']
  for name, size in baselines.items():
    report['baselines_bytes_per_frame'][name] = size / num_frames
    lines.append(f'| {name} | {size / num_frames:.1f} |')
  text = '\n'.join(lines) + '\n'
  with records.atomic_path(os.path.join(workdir, 'compress.md')) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)
  with records.atomic_path(os.path.join(workdir, 'compress.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(records.jsonable(report), f, indent=2)
  print('\n' + text, flush=True)
  logging.info('compressed and decoded in %.1fs: %s', time.time() - t0,
               workdir)
  return report
