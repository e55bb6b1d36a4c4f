"""I3D features for the eval jobs: batched, sharded over devices, timed.

`i3d.i3d_features` is the one-device reference path (224 px, 400-d logits).
`I3DFeatures` runs the same network (i3d.InceptionI3d on i3d.preprocess with
i3d.load_variables) with the batch split over every device of a mesh, at a
configurable layer, resolution and clip length, so that

  * rFVD / gFVD / the class score spread I3D over all accelerators, and
  * tests can run I3D at 32 px on the 'pool' layer in seconds.

The defaults are the standard FVD protocol: the first 16 frames of each clip,
resized to 224 x 224, 400-d logits (see i3d.py for the resize and scaling).
The function is compiled ahead of time, so `seconds` (and `seconds_per_clip`)
measure steady-state throughput, not XLA compilation (`compile_seconds`).
"""
import time
from typing import Optional

import jax
import numpy as np

from vftok import sharding
from vftok.models.pretrained import i3d

LAYERS = {'logits': i3d.NUM_CLASSES, 'pool': 1024}
# Compiled I3D programs shared by every extractor of the process (an eval job
# and its classifier, repeated runs in one notebook): compiling I3D takes far
# longer than running it on an eval set of a few dozen clips.
_EXECUTABLES = {}


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """Pads the batch dim to `rows` by repeating the last row (real data, so
  padded rows can never produce NaNs; their results are dropped)."""
  x = np.asarray(x)
  if x.shape[0] == rows:
    return x
  return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])


def check_layer(layer: str, resolution: int):
  if layer not in LAYERS:
    raise ValueError(f"I3D layer must be one of {sorted(LAYERS)}, got "
                     f"{layer!r}")
  # Logits need a 7 x 7 map after the 32x spatial stride (VALID 2x7x7 pool).
  if layer == 'logits' and -(-resolution // 32) < 7:
    raise ValueError(f"I3D layer 'logits' needs resolution >= 193 (224 is the "
                     f"FVD standard), got {resolution}; use layer='pool' for "
                     'smaller inputs')


class I3DFeatures:
  """clips [N, F, H, W, 3] in [0, 255] -> float32 features [N, D].

  The first `num_frames` frames of every clip are used (clips with fewer
  raise). Batches of `batch_size` (rounded up to a multiple of the device
  count; the last one padded) run sharded over `mesh` (default: all devices).
  """

  def __init__(self, layer: str = 'logits', resolution: int = i3d.RESOLUTION,
               num_frames: int = 16, batch_size: int = 8,
               mesh: Optional[jax.sharding.Mesh] = None,
               weights_path: Optional[str] = None):
    check_layer(layer, resolution)
    if num_frames < i3d.MIN_FRAMES:
      raise ValueError(f'I3D needs at least {i3d.MIN_FRAMES} frames per clip '
                       f'(16 is the FVD standard), got num_frames={num_frames}')
    self.layer, self.resolution, self.num_frames = layer, resolution, num_frames
    self.dim = LAYERS[layer]
    self.mesh = mesh or sharding.data_mesh()
    n = self.mesh.size
    self.batch_size = -(-max(batch_size, 1) // n) * n
    self._batch = sharding.batch_sharding(self.mesh)
    self._variables = jax.device_put(i3d.load_variables(weights_path),
                                     sharding.replicated(self.mesh))
    self.seconds = 0.0
    self.compile_seconds = 0.0
    self.clips = 0

  @property
  def description(self) -> str:
    return (f'I3D {self.layer} ({self.dim}-d), first {self.num_frames} frames '
            f'at {self.resolution}x{self.resolution}')

  def _executable(self, shape, dtype):
    key = (self.layer, self.resolution, self.num_frames, self.batch_size,
           tuple(d.id for d in self.mesh.devices.flat), shape[2], shape[3],
           np.dtype(dtype).str)
    if key not in _EXECUTABLES:
      t0 = time.perf_counter()
      layer, res = self.layer, self.resolution

      def forward(variables, clips):
        x = i3d.preprocess(clips, resolution=res)
        return i3d.InceptionI3d(layer=layer).apply(variables, x)

      abstract = jax.ShapeDtypeStruct(
          (self.batch_size, self.num_frames) + tuple(shape[2:]), dtype,
          sharding=self._batch)
      _EXECUTABLES[key] = jax.jit(
          forward, in_shardings=(sharding.replicated(self.mesh), self._batch),
          out_shardings=self._batch).lower(self._variables, abstract).compile()
      self.compile_seconds += time.perf_counter() - t0
    return _EXECUTABLES[key]

  def __call__(self, clips) -> np.ndarray:
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f'clips must be [N, F, H, W, 3], got {clips.shape}')
    if clips.shape[1] < self.num_frames:
      raise ValueError(f'clips have {clips.shape[1]} frames; the I3D features '
                       f'use the first {self.num_frames}')
    clips = clips[:, :self.num_frames]
    if clips.shape[0] == 0:
      return np.zeros((0, self.dim), np.float32)
    fn = self._executable(clips.shape, clips.dtype)
    outs = []
    t0 = time.perf_counter()
    for start in range(0, clips.shape[0], self.batch_size):
      batch = clips[start:start + self.batch_size]
      n = batch.shape[0]
      out = fn(self._variables, sharding.put_global(pad_rows(batch, self.batch_size),
                                           self._batch))
      outs.append(sharding.fetch(out)[:n])
    self.seconds += time.perf_counter() - t0
    self.clips += clips.shape[0]
    return np.concatenate(outs).astype(np.float32)

  @property
  def seconds_per_clip(self) -> float:
    return self.seconds / max(self.clips, 1)
