"""Reconstructs a video file at every token budget with a pretrained tokenizer.

    python -m vftok.main --config=configs/reconstruct.py \
        --config.video=PATH --workdir=DIR

`num_clips` clips of the tokenizer's clip length are read spread over the
video (by seeking: the time does not grow with the video's length),
centre-cropped and resized to the tokenizer's resolution, encoded with its
codec, tokenized, and decoded from the first k tokens of every latent frame
for k = 1, 2, 4, ..., K, both sampled (the config's Euler steps and
guidance) and as the one-step mean. Writes to the workdir:

  reconstruct.md    one row per budget (sampled and one-step-mean PSNR, dB,
                    averaged over the clips), then the model-free baselines
                    (clip mean colour, 2x2 and 4x4 thumbnails) and the codec
  reconstruct.png   originals, codec, each budget sampled, each budget's mean
  reconstruct.json  the same numbers, per clip too, with the clip times, and
                    each row's 8x8 block grid (reconstruction.block_grid: 0 =
                    none; speckled samples show about twice the codec's)

Every file is written whole or not at all (temp + rename).
"""
import json
import os
import time

from absl import logging
import numpy as np
from PIL import Image

from vftok.api import pretrained
from vftok.data import records
from vftok.data import video_io
from vftok.evals import reconstruction
from vftok.models import tokenizer as tokenizer_lib


def run(config, workdir: str):
  video_io.check_video_job(config, workdir, 'reconstruct')
  t0 = time.time()
  model = pretrained.load(config.tokenizer or pretrained.SMALL64)
  tok = model.tokenizer
  budgets = tokenizer_lib.check_budgets(tok.config.model, config.budgets)
  frames, starts = video_io.spread_clips(
      os.path.expanduser(config.video), config.num_clips,
      video_io.ClipParams(num_frames=model.num_frames,
                          resolution=model.resolution))
  logging.info('read %d clips of %s at %s s', len(frames), config.video,
               ', '.join(f'{s:.2f}' for s in starts))
  steps = config.sample_steps or tok.sample_defaults()['steps']
  guidance = config.guidance_scale or tok.sample_defaults()['guidance_scale']
  scores, rows = reconstruction.reconstruct_batch(
      tok, model.encode(frames), frames, model.to_pixels, budgets, steps,
      guidance, seed=config.seed)
  table = {name: float(np.mean(v)) for name, v in scores.items()}
  labels = reconstruction.row_labels(budgets)
  blocks = {label: float(np.mean(reconstruction.block_grid(row)))
            for label, row in zip(labels, rows)}
  text = reconstruction.table_markdown(table, budgets, steps, guidance,
                                       reconstruction.one_step_label(tok))
  head = (f'{os.path.basename(config.video)}: {len(frames)} clips of '
          f'{model.num_frames} frames starting at '
          f'{", ".join(f"{s:.2f}" for s in starts)} s, centre-cropped to '
          f'{model.resolution}x{model.resolution}; tokenizer {model.source}'
          f' (step {tok.step}); PSNR in dB\n\n')
  print(f'\n{head}{text}\n', flush=True)

  os.makedirs(workdir, exist_ok=True)
  grid = reconstruction.make_grid(
      rows, labels, clips=min(len(frames), 4),
      label_width=76)
  with records.atomic_path(os.path.join(workdir, 'reconstruct.png')) as tmp:
    Image.fromarray(grid).save(tmp, format='PNG')
  with records.atomic_path(os.path.join(workdir, 'reconstruct.md')) as tmp:
    with open(tmp, 'w') as f:
      f.write(head + text + '\n')
  with records.atomic_path(os.path.join(workdir, 'reconstruct.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(dict(video=os.path.abspath(config.video), clip_starts_s=starts,
                     tokenizer=model.source, step=tok.step, budgets=budgets,
                     sample_steps=steps, guidance_scale=guidance,
                     seed=config.seed, psnr=table, block_grid=blocks,
                     psnr_per_clip={k: np.asarray(v).tolist()
                                    for k, v in scores.items()}), f, indent=2)
  logging.info('reconstructed in %.1fs: %s', time.time() - t0, workdir)
  return table
