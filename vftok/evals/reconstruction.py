"""Reconstruction at every token budget during training: PSNR table + images.

For each held-out clip: tokenize, decode with the first k tokens of every
latent frame for k in 1, 2, 4, ..., K, map latents to pixels with the data's
codec and compare with the original pixels. The codec's own reconstruction is
reported too: it is the ceiling the tokenizer can reach.

The decoder is generative, so two columns: the sampled reconstruction (the
eval's Euler steps and guidance) and the one-step mean prediction (one Euler
step from pure noise: the decoder's estimate of E[x | tokens], the
PSNR-optimal output, blurrier than a sample). Baselines that need no model
put the numbers in scale: each frame painted with its clip's mean colour, and
frames rebuilt from an n x n area-downsampled thumbnail (bilinear back up).
"""
import os
from typing import Dict, List

import numpy as np
from PIL import Image
from PIL import ImageDraw

from vftok import api
from vftok.models import latent_codecs
from vftok.models.pretrained import resample
from vftok.data import pipeline
from vftok.data import records
from vftok.evals import pixels
from vftok.models import tokenizer as tokenizer_lib


class Evaluator:
  def __init__(self, config, data, workdir: str, writer):
    self.config, self.workdir, self.writer = config, workdir, writer
    self.budgets = tokenizer_lib.budgets(config.model)
    self.batches = pipeline.make_eval_batches(
        config.data, data, num_clips=config.eval.num_clips,
        batch_size=min(config.eval.num_clips, 8))
    self.codec = latent_codecs.load_codec(data)
    self.denormalize = pipeline.make_denormalizer(data)
    self.tok = None

  def run(self, step: int, params) -> Dict[str, float]:
    if self.tok is None:
      self.tok = api.Tokenizer(self.config, params)
    self.tok.params = params
    e = self.config.eval
    psnr: Dict[str, List[np.ndarray]] = {}
    rows = None
    for i, batch in enumerate(self.batches):
      scores, batch_rows = reconstruct_batch(
          self.tok, batch['latents'], batch['frames'], self._to_pixels,
          self.budgets, e.sample_steps, e.guidance_scale, seed=step)
      for name, v in scores.items():
        psnr.setdefault(name, []).append(v)
      if i == 0:
        rows = batch_rows
    table = {name: float(np.mean(np.concatenate(v))) for name, v in psnr.items()}
    self._write(step, table, rows)
    return table

  def _to_pixels(self, latents):
    return np.clip(self.codec.decode(self.denormalize(latents)), 0, 255)

  def _write(self, step, table, rows):
    e = self.config.eval
    text = table_markdown(table, self.budgets, e.sample_steps, e.guidance_scale,
                          one_step_label(self.tok))
    print(f'\nReconstruction PSNR at step {step} '
          f'({self.config.eval.num_clips} held-out clips):\n{text}\n', flush=True)
    self.writer.write_scalars(step, {f'eval/psnr_{n}': v for n, v in table.items()})
    grid = make_grid(rows, row_labels(self.budgets), label_width=76)
    self.writer.write_images(step, {'eval/reconstructions': grid[None]})
    # Atomic (temp + rename): a run killed here leaves no half-written file.
    with records.atomic_path(
        os.path.join(self.workdir, f'recon_{step}.png')) as tmp:
      Image.fromarray(grid).save(tmp, format='PNG')
    with records.atomic_path(
        os.path.join(self.workdir, f'psnr_{step}.md')) as tmp:
      with open(tmp, 'w') as f:
        f.write(text + '\n')


BASELINES = ('clip mean colour', '2x2 thumbnail', '4x4 thumbnail')


def reconstruct_batch(tok, latents, frames, to_pixels, budgets, steps: int,
                      guidance_scale: float, seed: int):
  """PSNR per clip of one batch at every budget, against `frames`.

  tok: an api.Tokenizer; latents: what it takes (normalised); to_pixels:
  its latents -> pixels (denormalise, codec decode). -> ({'k=<k>' sampled,
  'mean_k=<k>' one-step mean, 'codec', BASELINES...: float [B]}, the picture's
  rows in row_labels(budgets) order)."""
  psnr = {}
  add = lambda name, px: psnr.__setitem__(
      name, np.asarray(pixels.psnr(px, frames)))
  codec_px = to_pixels(latents)
  add('codec', codec_px)
  for name, px in baselines(frames).items():
    add(name, px)
  tokens = tok.tokenize(latents)
  recon, mean = {}, {}
  for k in budgets:
    lat = tok.detokenize(tokens[:, :, :k], steps=steps,
                         guidance_scale=guidance_scale, seed=seed)
    recon[k] = to_pixels(np.asarray(lat))
    add(f'k={k}', recon[k])
    lat = tok.detokenize(tokens[:, :, :k], seed=seed, **one_step_args(tok))
    mean[k] = to_pixels(np.asarray(lat))
    add(f'mean_k={k}', mean[k])
  rows = ([frames, codec_px] + [recon[k] for k in budgets]
          + [mean[k] for k in budgets])
  return psnr, rows


def one_step_args(tok) -> dict:
  """The second column's decode: the one-step mean (one unguided Euler
  step); for a distilled student that was trained for one step, its 1-step
  sample instead (a student has no unguided velocity to take a mean from)."""
  if 1 in tok.student_steps:
    return dict(steps=1)
  return dict(steps=1, guidance_scale=1.0,
              sampler='teacher' if tok.is_distilled else None)


def one_step_label(tok) -> str:
  return '1-step student' if 1 in tok.student_steps else 'one-step mean'


def block_grid(frames, block: int = 8) -> np.ndarray:
  """How visible a grid of `block` x `block` blocks is in clips [B, F, H, W,
  3]: the mean |difference| of neighbouring pixels across block borders
  minus the mean inside blocks (horizontal and vertical; pixel levels) ->
  [B]. About 0 for natural video. The patch codec's truncation leaves a
  faint grid (measured 7.9 on bikes.mp4); the 8x8 speckle of samples that
  draw each latent position's detail wrongly doubles it (14.5-15.4, the
  demo model)."""
  x = np.asarray(frames, np.float32)
  excess = []
  for axis in (2, 3):
    d = np.abs(np.diff(x, axis=axis))
    border = np.arange(d.shape[axis]) % block == block - 1
    excess.append(np.compress(border, d, axis=axis).mean(axis=(1, 2, 3, 4))
                  - np.compress(~border, d, axis=axis).mean(axis=(1, 2, 3, 4)))
  return (excess[0] + excess[1]) / 2


def row_labels(budgets):
  return (['original', 'codec'] + [f'{k} tok' for k in budgets]
          + [f'{k} tok mean' for k in budgets])


def table_markdown(table: Dict[str, float], budgets, steps: int,
                   guidance_scale: float,
                   second: str = 'one-step mean') -> str:
  """The PSNR table (mean dB per row of `reconstruct_batch`'s names): one row
  per budget, sampled and one-step mean, then the baselines and the codec."""
  lines = [f'| tokens / latent frame | sampled ({steps} steps, '
           f'guidance {guidance_scale:g}) | {second} |', '|---|---|---|']
  lines += [f'| {k} | {table[f"k={k}"]:.2f} | {table[f"mean_k={k}"]:.2f} |'
            for k in budgets]
  lines += ['| **baselines** | | |']
  lines += [f'| {name} | {table[name]:.2f} | |' for name in BASELINES]
  lines += [f'| codec only (ceiling) | {table["codec"]:.2f} | |']
  return '\n'.join(lines)


def baselines(frames) -> Dict[str, np.ndarray]:
  """Model-free reconstructions of clips [B, F, H, W, 3] (BASELINES): every
  frame painted with its clip's mean colour; every frame area-downsampled to
  an n x n thumbnail and resized back up bilinearly (H, W divisible by n)."""
  frames = np.asarray(frames, np.float32)
  h, w = frames.shape[2:4]
  out = {BASELINES[0]: np.broadcast_to(
      frames.mean(axis=(1, 2, 3), keepdims=True), frames.shape)}
  for name, n in zip(BASELINES[1:], (2, 4)):
    if h % n or w % n:
      raise ValueError(f'frames {h}x{w} do not split into {n}x{n} areas')
    # Area average down, half-pixel bilinear back up (the REPA targets' resize).
    thumb = resample.resize_grid(frames, (n, n))
    out[name] = np.asarray(resample.resize_grid(thumb, (h, w)))
  return out


def make_grid(rows, labels=None, clips: int = 2, frames_per_clip: int = 5,
              pad: int = 2, label_width: int = 64):
  """rows: list of [B, F, H, W, 3] -> uint8 image; one row per entry, showing
  `frames_per_clip` evenly spaced frames of the first `clips` clips, with an
  optional text label left of each row."""
  b, f, h, w, _ = rows[0].shape
  clips = min(clips, b)
  idx = np.linspace(0, f - 1, frames_per_clip).round().astype(int)
  cols = clips * frames_per_clip
  left = label_width if labels else 0
  grid = np.full((len(rows) * (h + pad) + pad, left + cols * (w + pad) + pad, 3),
                 255, np.uint8)
  for r, row in enumerate(rows):
    for c in range(clips):
      for j, fi in enumerate(idx):
        y = pad + r * (h + pad)
        x = left + pad + (c * frames_per_clip + j) * (w + pad)
        grid[y:y + h, x:x + w] = np.clip(np.asarray(row[c, fi]), 0, 255).astype(np.uint8)
  if labels:
    img = Image.fromarray(grid)
    draw = ImageDraw.Draw(img)
    for r, text in enumerate(labels):
      draw.text((4, pad + r * (h + pad) + h // 2 - 5), text, fill=(0, 0, 0))
    grid = np.asarray(img)
  return grid
