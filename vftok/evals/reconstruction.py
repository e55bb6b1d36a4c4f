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
    self.budgets = tokenizer_lib.keep_budgets(config.model.tokens_per_frame)
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
    add = lambda name, px, frames: psnr.setdefault(name, []).append(
        np.asarray(pixels.psnr(px, frames)))
    rows = None
    for i, batch in enumerate(self.batches):
      frames = batch['frames']
      codec_px = self._to_pixels(batch['latents'])
      add('codec', codec_px, frames)
      for name, px in baselines(frames).items():
        add(name, px, frames)
      tokens = self.tok.tokenize(batch['latents'])
      recon, mean = {}, {}
      for k in self.budgets:
        lat = self.tok.detokenize(tokens[:, :, :k], steps=e.sample_steps,
                                  guidance_scale=e.guidance_scale, seed=step)
        recon[k] = self._to_pixels(np.asarray(lat))
        add(f'k={k}', recon[k], frames)
        lat = self.tok.detokenize(tokens[:, :, :k], steps=1,
                                  guidance_scale=1.0, seed=step)
        mean[k] = self._to_pixels(np.asarray(lat))
        add(f'mean_k={k}', mean[k], frames)
      if i == 0:
        rows = ([frames, codec_px] + [recon[k] for k in self.budgets]
                + [mean[k] for k in self.budgets])
    table = {name: float(np.mean(np.concatenate(v))) for name, v in psnr.items()}
    self._write(step, table, rows)
    return table

  def _to_pixels(self, latents):
    return np.clip(self.codec.decode(self.denormalize(latents)), 0, 255)

  def _write(self, step, table, rows):
    labels = (['original', 'codec'] + [f'{k} tok' for k in self.budgets]
              + [f'{k} tok mean' for k in self.budgets])
    e = self.config.eval
    lines = [f'| tokens / latent frame | sampled ({e.sample_steps} steps, '
             f'guidance {e.guidance_scale:g}) | one-step mean |', '|---|---|---|']
    lines += [f'| {k} | {table[f"k={k}"]:.2f} | {table[f"mean_k={k}"]:.2f} |'
              for k in self.budgets]
    lines += ['| **baselines** | | |']
    lines += [f'| {name} | {table[name]:.2f} | |' for name in BASELINES]
    lines += [f'| codec only (ceiling) | {table["codec"]:.2f} | |']
    text = '\n'.join(lines)
    print(f'\nReconstruction PSNR at step {step} '
          f'({self.config.eval.num_clips} held-out clips):\n{text}\n', flush=True)
    self.writer.write_scalars(step, {f'eval/psnr_{n}': v for n, v in table.items()})
    grid = make_grid(rows, labels, label_width=76)
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
