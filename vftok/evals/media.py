"""Writing generated videos: tiling, animated GIF (PIL) and MP4 (PyAV).

Videos are uint8 (or float in [0, 255]) [F, H, W, 3] RGB arrays. Writers go
through records.atomic_path, so a reader never sees half a file.
"""
from typing import Sequence

import av
import numpy as np
from PIL import Image

from vftok.data import records


def to_uint8(x) -> np.ndarray:
  return np.clip(np.round(np.asarray(x, np.float32)), 0, 255).astype(np.uint8)


def tile(videos, pad: int = 2, background: int = 255) -> np.ndarray:
  """videos [R, C, F, H, W, 3] -> one video [F, H', W', 3]: an R x C grid."""
  videos = to_uint8(videos)
  r, c, f, h, w, _ = videos.shape
  out = np.full((f, r * (h + pad) + pad, c * (w + pad) + pad, 3), background,
                np.uint8)
  for i in range(r):
    for j in range(c):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[:, y:y + h, x:x + w] = videos[i, j]
  return out


def upscale(video, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement (64 px clips are hard to see)."""
  video = np.asarray(video)
  if factor <= 1:
    return video
  return video.repeat(factor, axis=-3).repeat(factor, axis=-2)


def write_gif(path: str, video, fps: float = 8.0) -> str:
  """Looping animated GIF of `video` [F, H, W, 3]; -> path."""
  frames = [Image.fromarray(f) for f in to_uint8(video)]
  with records.atomic_path(path) as tmp:
    frames[0].save(tmp, format='GIF', save_all=True,
                   append_images=frames[1:], loop=0,
                   duration=max(1, int(round(1000 / fps))))
  return path


def write_mp4(path: str, video, fps: float = 8.0, codec: str = 'libx264',
              crf: int = 18) -> str:
  """H.264 (yuv420p, playable everywhere) MP4 of `video` [F, H, W, 3]; the
  frame is padded to even sides, which yuv420p needs; -> path."""
  video = to_uint8(video)
  f, h, w, _ = video.shape
  video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  with records.atomic_path(path) as tmp:
    with av.open(tmp, mode='w', format='mp4') as container:
      stream = container.add_stream(codec, rate=int(round(fps)))
      stream.width, stream.height = video.shape[2], video.shape[1]
      stream.pix_fmt = 'yuv420p'
      if codec == 'libx264':
        stream.options = {'crf': str(crf)}
      for frame in video:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame,
                                                               format='rgb24')):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
  return path


def write_video(path_stem: str, video, fps: float,
                formats: Sequence[str] = ('gif',)) -> list:
  """Writes `video` as <path_stem>.<fmt> for each format; -> the paths."""
  writers = {'gif': write_gif, 'mp4': write_mp4}
  unknown = set(formats) - set(writers)
  if unknown:
    raise ValueError(f'unknown video formats {sorted(unknown)}; choose from '
                     f'{sorted(writers)}')
  return [writers[fmt](f'{path_stem}.{fmt}', video, fps) for fmt in formats]
