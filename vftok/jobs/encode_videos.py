"""Encodes videos into latent records (the trainer's input), sharded.

    python -m vftok.main --config=configs/encode_videos.py --workdir=DIR \
      --config.input=/data/videos [--config.worker_index=i \
      --config.worker_count=n]

Phases: list inputs -> plan shards -> codec (load, or fit and save) ->
encode this worker's unfinished shards -> finalize (when every shard is done).

Written to the workdir (one split per workdir; encode the eval split into
another, passing this one's codec.npz as config.codec_path):
  plan.json                    the inputs and parameters the shards follow
  codec.npz                    pca_offline parameters (fitted or copied)
  <split>-SSSSS-of-NNNNN.array_record   records.py schema, one clip each
  shard_stats/*.json           per shard: counts, latent sums, skipped videos
  manifest.json, report.json   on finalize: counts, shapes, dtypes, codec,
                               source fps, latent mean / std; skipped videos

Shards hold `videos_per_shard` consecutive inputs, so their contents do not
depend on the worker count: n workers write the same files as one. The
finalize step runs in whichever worker finds every shard done (or in a
`--config.finalize=True` pass) and merges the shard stats in shard order.
"""
import collections
import dataclasses
import os
import shutil
import time

from absl import logging
import numpy as np

from vftok import errors
from vftok.data import chunks
from vftok.data import codecs
from vftok.models import latent_codecs
from vftok.data import records
from vftok.data import shards
from vftok.data import video_io

CODEC_FILE = 'codec.npz'
FORMAT = 'vftok-latent-records/1'


def clip_params(config) -> video_io.ClipParams:
  return video_io.ClipParams(
      num_frames=config.num_frames, resolution=config.resolution,
      fps=float(config.fps), stride=config.clip_stride,
      max_clips_per_video=config.max_clips_per_video, crop=config.crop,
      seed=config.seed, tfds_fps=float(config.tfds_fps))


def run(config, workdir: str):
  """Encodes this worker's shards; finalizes if every shard is done."""
  if config.finalize:
    return finalize(workdir)
  worker, workers = shards.resolve_worker(config)
  if config.latent_dtype not in ('float16', 'float32'):
    raise ValueError(f"latent_dtype={config.latent_dtype!r}: 'float16' or "
                     "'float32'")

  # ---- inputs (the videos, the codec's weights) and plan: all found before
  # the workdir is made ------------------------------------------------------
  params = clip_params(config)
  inputs, listing_problems = video_io.list_inputs(config.input,
                                                  config.tfds_data_dir)
  classes = []
  if config.label_from_dir:
    inputs, classes = video_io.labels_from_dirs(inputs)
  if not inputs:
    raise errors.InputError(
        f'no videos in config.input={config.input!r} (skipped: '
        f'{listing_problems[:5]}): pass a folder, glob or .csv/.jsonl '
        'manifest of video files (.mp4, .mov, .webm, ...)')
  per = config.videos_per_shard
  if per < 1:
    raise ValueError(f'videos_per_shard={per} must be >= 1')
  num_shards = -(-len(inputs) // per)
  codec_path = CODEC_FILE
  if config.codec == latent_codecs.VidTokCodec.name:
    latent_codecs.check_vidtok_weights(config.codec_path)
    codec_path = os.path.abspath(os.path.expanduser(config.codec_path))
  elif config.codec_path and not os.path.isfile(
      os.path.expanduser(config.codec_path)):
    raise errors.InputError(
        f'config.codec_path={config.codec_path!r} does not exist: pass the '
        f'{CODEC_FILE} of the train split\'s encode_videos workdir (or leave '
        'it empty to fit a codec here)')
  os.makedirs(workdir, exist_ok=True)
  plan = shards.check_plan(workdir, dict(
      format='vftok-encode-plan/1', input=config.input, split=config.split,
      num_videos=len(inputs), videos_per_shard=per, num_shards=num_shards,
      inputs_digest=shards.digest([(v.uid, v.label, v.caption, v.start, v.end)
                                   for v in inputs]),
      clip=dataclasses.asdict(params), codec=config.codec,
      codec_path=codec_path, store_frames=config.store_frames,
      latent_dtype=config.latent_dtype, classes=classes,
      listing_problems=listing_problems), ignore=('input', 'listing_problems'))
  mine = shards.assigned(num_shards, worker, workers)
  todo = [s for s in mine
          if not shards.is_done(workdir, shards.shard_name(config.split, s,
                                                           num_shards))]
  logging.info('%d videos in %d shards; worker %d/%d: %d shards, %d to do',
               len(inputs), num_shards, worker, workers, len(mine), len(todo))

  # ---- codec -----------------------------------------------------------------
  codec = None
  if todo:
    codec = _codec(config, workdir, inputs, params, worker)

  # ---- encode ----------------------------------------------------------------
  progress = shards.Progress(f'worker {worker}/{workers}', 'clips',
                             config.log_every_s)
  for i, s in enumerate(todo):
    _encode_shard(config, workdir, inputs, params, codec, s, num_shards,
                  progress, f'shard {i + 1}/{len(todo)}')
  if todo:
    progress.log(f'{len(todo)} shards done')

  # ---- finalize --------------------------------------------------------------
  _, missing = shards.collect(workdir, config.split, num_shards)
  if missing:
    logging.info('%d shards still to do by other workers; the last worker to '
                 'finish (or --config.finalize=True) writes manifest.json',
                 len(missing))
    return None
  return finalize(workdir, plan)


# ---- codec -------------------------------------------------------------------

def _codec(config, workdir, inputs, params, worker) -> codecs.LatentCodec:
  if config.codec == latent_codecs.VidTokCodec.name:
    return latent_codecs.get_codec(
        config.codec, config.codec_path,
        clips_per_device=config.vidtok_clips_per_device,
        dtype=config.vidtok_dtype)
  if config.codec != codecs.PatchPCACodec.name:
    raise ValueError(f"unknown codec {config.codec!r}; choose 'pca_offline' "
                     "or 'vidtok'")
  path = os.path.join(workdir, CODEC_FILE)
  if not os.path.exists(path):
    if config.codec_path:
      with records.atomic_path(path) as tmp:
        shutil.copyfile(os.path.expanduser(config.codec_path), tmp)
    elif worker == 0:
      _fit_codec(config, inputs, params).save(path)
    else:
      shards.wait_for(path, config.codec_wait_s, 'worker 0 to fit the codec')
  return codecs.PatchPCACodec.load(path)


def _fit_codec(config, inputs, params) -> codecs.PatchPCACodec:
  """Fits the offline codec on up to `codec_fit_clips` clips: at most
  `codec_fit_clips_per_video` from each video, videos in a seeded order."""
  t0 = time.time()
  order = np.random.default_rng(config.seed).permutation(len(inputs))
  fit_params = dataclasses.replace(
      params, max_clips_per_video=config.codec_fit_clips_per_video)
  clips = video_io.iter_clips(inputs, fit_params, [], indices=order,
                              tfds_data_dir=config.tfds_data_dir)
  frames = [c.frames for _, c in zip(range(config.codec_fit_clips), clips)]
  if not frames:
    raise ValueError('no readable clips to fit the codec on (see the '
                     'problems reported per shard)')
  batches = (np.stack(frames[i:i + config.batch_size])
             for i in range(0, len(frames), config.batch_size))
  codec = codecs.PatchPCACodec().fit(batches,
                                     max_patches=config.codec_max_patches)
  logging.info('fitted the offline codec on %d clips in %.1fs', len(frames),
               time.time() - t0)
  return codec


# ---- one shard ---------------------------------------------------------------

class _Moments:
  """Per-channel count, sum and sum of squares (float64)."""

  def __init__(self):
    self.n, self.s, self.ss = 0, 0.0, 0.0

  def add(self, z):
    flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
    self.n += len(flat)
    self.s = self.s + flat.sum(0)
    self.ss = self.ss + np.square(flat).sum(0)


def _batches(clips, size):
  batch = []
  for c in clips:
    batch.append(c)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _encode_shard(config, workdir, inputs, params, codec, s, num_shards,
                  progress, note):
  name = shards.shard_name(config.split, s, num_shards)
  shards.remove_stale(workdir, name)
  t0 = time.time()
  indices = range(s * config.videos_per_shard,
                  min((s + 1) * config.videos_per_shard, len(inputs)))
  problems = []
  moments = _Moments()
  clips_per_video = collections.Counter()
  fps = {}
  clips = video_io.iter_clips(inputs, params, problems, indices=indices,
                              tfds_data_dir=config.tfds_data_dir)

  def examples():
    for batch in _batches(clips, config.batch_size):
      # Clips longer than 17 frames: 17-frame chunks sharing one frame, each
      # encoded alone (as the release encodes 81-frame videos).
      lat = chunks.encode_clips(codec, np.stack([c.frames for c in batch]))
      lat = lat.astype(config.latent_dtype)
      moments.add(lat)  # the stats of the data as written
      for c, z in zip(batch, lat):
        clips_per_video[c.video_index] += 1
        fps[c.video_index] = c.source_fps
        ex = dict(latents=z, label=int(c.label), caption=c.video.caption,
                  source=f'{c.video.uid}:{c.start}')
        if config.store_frames:
          ex['frames'] = c.frames
        yield ex
      progress.add(len(batch), f'{note}, {name}')

  count = records.write_records(os.path.join(workdir, name), examples())
  shards.commit(workdir, name, dict(
      shard=s, videos=len(indices), videos_encoded=len(clips_per_video),
      clips=count, latent_count=moments.n,
      latent_sum=np.atleast_1d(moments.s).tolist() if count else [],
      latent_sumsq=np.atleast_1d(moments.ss).tolist() if count else [],
      source_fps=dict(collections.Counter(f'{f:g}' for f in fps.values())),
      problems=problems, seconds=round(time.time() - t0, 3)))


# ---- finalize ----------------------------------------------------------------

def finalize(workdir: str, plan=None):
  """Merges the shard stats into manifest.json and report.json -> manifest.

  Deterministic: the same files whatever the number of workers.
  """
  plan = plan or shards.read_plan(workdir)
  split, n = plan['split'], plan['num_shards']
  stats = shards.require_all(workdir, split, n)
  clips = sum(st['clips'] for st in stats)
  problems = [list(p) for p in plan['listing_problems']]
  for st in stats:
    problems += st['problems']
  encoded = sum(st['videos_encoded'] for st in stats)
  shards.write_json(os.path.join(workdir, shards.REPORT), dict(
      videos=plan['num_videos'], videos_encoded=encoded,
      videos_skipped=plan['num_videos'] - encoded, clips=clips,
      problems=[dict(path=p, reason=r) for p, r in problems]))
  if not clips:
    raise ValueError(f'no clip was encoded: see {shards.REPORT} in {workdir}')

  count, s1, s2 = 0, 0.0, 0.0
  fps = collections.Counter()
  for st in stats:  # shard order: the same sums for any worker count
    if st['clips']:
      count += st['latent_count']
      s1 = s1 + np.asarray(st['latent_sum'])
      s2 = s2 + np.asarray(st['latent_sumsq'])
    fps.update(st['source_fps'])
  mean = s1 / count
  std = np.sqrt(np.maximum(s2 / count - mean ** 2, 1e-12))

  c = plan['clip']
  f, r = c['num_frames'], c['resolution']
  fields = ['latents', 'label', 'caption', 'source']
  if plan['store_frames']:
    fields.append('frames')
  manifest = dict(
      format=FORMAT, codec=plan['codec'], codec_path=plan['codec_path'],
      split=split, counts={split: clips}, shards={split: n},
      pattern=shards.shard_pattern(split),
      frames_shape=[f, r, r, 3],
      latent_shape=[chunks.stored_latent_frames(f), r // 8, r // 8, len(mean)],
      latent_dtype=plan['latent_dtype'], fields={split: fields},
      videos=dict(total=plan['num_videos'], encoded=encoded),
      source_fps=dict(sorted(fps.items(), key=lambda kv: float(kv[0]))),
      latent_mean=mean, latent_std=std, classes=plan['classes'],
      build=dict(clip=c, videos_per_shard=plan['videos_per_shard'],
                 inputs_digest=plan['inputs_digest']))
  if chunks.is_long(f):
    manifest['chunks'] = chunks.manifest_entry(f)
  records.write_manifest(workdir, manifest)
  logging.info('%s: %d clips from %d of %d videos in %d shards (%d problems, '
               'see %s)', workdir, clips, encoded, plan['num_videos'], n,
               len(problems), shards.REPORT)
  return manifest
