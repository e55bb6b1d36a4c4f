"""Sharded, resumable writing of record sets by several workers.

The data jobs (encode_videos, tokenize_dataset) split their work into shards
that are fixed by the input alone, never by the number of workers:

  <workdir>/plan.json                       what the shards hold (inputs,
                                            parameters); a rerun or another
                                            worker must agree with it
  <workdir>/<split>-SSSSS-of-NNNNN.array_record   shard S (atomic: temp+rename)
  <workdir>/shard_stats/<shard file>.json   written after the shard: the
                                            commit marker, with its counts
                                            and per-channel sums

Worker w of W writes shards w, w + W, w + 2W, ...; a shard counts as done
when both files exist, so a rerun skips done shards and redoes the rest (a
shard killed mid-write leaves at most a temp file, removed on the redo).
Merging walks the stats in shard order, so the merged numbers of W workers
equal those of one worker bit for bit.
"""
import glob
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging

from vftok import errors
from vftok.data import records

PLAN = 'plan.json'
STATS_DIR = 'shard_stats'
REPORT = 'report.json'


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f'{split}-{shard:05d}-of-{num_shards:05d}.array_record'


def shard_pattern(split: str) -> str:
  return f'{split}-*-of-*.array_record'


def stats_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, STATS_DIR, name + '.json')


def resolve_worker(config) -> Tuple[int, int]:
  """(index, count) from config.worker_index / worker_count, or from JAX's
  processes when worker_count <= 0."""
  count, index = config.worker_count, config.worker_index
  if count <= 0:
    import jax  # pylint: disable=g-import-not-at-top
    index, count = jax.process_index(), jax.process_count()
  if not 0 <= index < count:
    raise ValueError(f'worker_index={index} is not in [0, worker_count='
                     f'{count})')
  return index, count


def assigned(num_shards: int, index: int, count: int) -> List[int]:
  """The shards of worker `index` of `count` (disjoint, together all)."""
  return list(range(index, num_shards, count))


def write_json(path: str, obj: Any):
  """Atomic JSON write (numpy values allowed)."""
  with records.atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(records.jsonable(obj), f, indent=1)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def digest(obj: Any) -> str:
  """A stable hash of a JSON-able value."""
  blob = json.dumps(records.jsonable(obj), sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()


def check_plan(workdir: str, plan: Dict[str, Any],
               ignore: Tuple[str, ...] = ()) -> Dict[str, Any]:
  """Writes plan.json, or checks that the existing one agrees (keys in
  `ignore` may differ, e.g. host-specific paths). -> the plan on disk."""
  path = os.path.join(workdir, PLAN)
  if os.path.exists(path):
    old = read_json(path)
    new = json.loads(json.dumps(records.jsonable(plan)))
    diff = sorted(k for k in set(old) | set(new)
                  if k not in ignore and old.get(k) != new.get(k))
    if diff:
      raise errors.InputError(
          f'{workdir} holds shards of another plan (differs in {diff}: '
          + ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}'
                      for k in diff[:3])
          + '); use a new workdir, or the same config and inputs to resume')
    return old
  write_json(path, plan)
  return plan


def read_plan(workdir: str) -> Dict[str, Any]:
  path = os.path.join(workdir, PLAN)
  if not os.path.exists(path):
    raise errors.InputError(f'no {PLAN} in {workdir}: run the job (any '
                            'worker) before finalize')
  return read_json(path)


def is_done(workdir: str, name: str) -> bool:
  return (os.path.exists(os.path.join(workdir, name))
          and os.path.exists(stats_path(workdir, name)))


def remove_stale(workdir: str, name: str):
  """Drops what a killed run left of shard `name`: temp files, and a record
  file without its stats (the shard is about to be rewritten)."""
  for base in (os.path.join(workdir, name), stats_path(workdir, name)):
    for tmp in glob.glob(glob.escape(base) + '.tmp-*'):
      os.remove(tmp)
  path = os.path.join(workdir, name)
  if os.path.exists(path) and not os.path.exists(stats_path(workdir, name)):
    os.remove(path)


def commit(workdir: str, name: str, stats: Dict[str, Any]):
  """Marks shard `name` done (call after its record file is in place)."""
  write_json(stats_path(workdir, name), stats)


def collect(workdir: str, split: str, num_shards: int
            ) -> Tuple[List[Optional[Dict[str, Any]]], List[int]]:
  """-> (stats of every shard in order, None where missing; missing ids)."""
  out, missing = [], []
  for s in range(num_shards):
    name = shard_name(split, s, num_shards)
    if is_done(workdir, name):
      out.append(read_json(stats_path(workdir, name)))
    else:
      out.append(None)
      missing.append(s)
  return out, missing


def require_all(workdir: str, split: str, num_shards: int
                ) -> List[Dict[str, Any]]:
  stats, missing = collect(workdir, split, num_shards)
  if missing:
    raise errors.InputError(
        f'{len(missing)} of {num_shards} shards in {workdir} are not done '
        f'(e.g. {missing[:8]}): run the remaining workers (a rerun of a '
        'worker finishes its shards) before finalize')
  return stats


def wait_for(path: str, timeout_s: float, what: str, poll_s: float = 5.0):
  """Blocks until `path` exists (written by another worker)."""
  t0 = time.time()
  while not os.path.exists(path):
    if time.time() - t0 > timeout_s:
      raise TimeoutError(f'waited {timeout_s:.0f}s for {what} ({path})')
    logging.log_every_n_seconds(logging.INFO, 'waiting for %s (%s)', 60, what,
                                path)
    time.sleep(poll_s)


class Progress:
  """Logs items done and the rate, at most every `every_s` seconds."""

  def __init__(self, what: str, unit: str, every_s: float = 30.0):
    self.what, self.unit, self.every_s = what, unit, every_s
    self.t0 = self.last = time.time()
    self.n = 0

  @property
  def rate(self) -> float:
    return self.n / max(time.time() - self.t0, 1e-9)

  def add(self, n: int = 1, note: str = ''):
    self.n += n
    now = time.time()
    if now - self.last >= self.every_s:
      self.last = now
      self.log(note)

  def log(self, note: str = ''):
    logging.info('%s: %d %s, %.2f %s/s%s', self.what, self.n, self.unit,
                 self.rate, self.unit, f' ({note})' if note else '')
