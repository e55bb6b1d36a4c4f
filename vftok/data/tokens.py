"""Token records: latent records -> the AR model's input (tokens uint16
[T / time patch, K] per clip with the latent record's label, caption and
source, optionally caption embeddings), written as shards. Long clips
(latents stored per 17-frame chunk, data/chunks.py) go through the
tokenizer's tokenize_long: [(F - 1) / 4 + 1, K]. config.tokens_per_frame
keeps the first n of every frame's K (the AR model's budget).

Phases: plan (one output shard per input file) -> tokenize this worker's
unfinished shards -> finalize (manifest.json, when all are done). Latents
are normalised exactly as the tokenizer's trainer normalised them
(pipeline.Data with the tokenizer config's data.normalize) with the mean /
std of `stats_from` (default: the input records' manifest.json). Sharding,
resume and the worker split follow data/shards.py, as in encode_videos. The
tokenizer is passed in: data/ imports no model (jobs/tokenize_dataset.py
loads it).
"""
import os
import time

from absl import logging
from array_record.python import array_record_module
import numpy as np

from vftok import errors
from vftok.data import chunks
from vftok.data import pipeline
from vftok.data import records
from vftok.data import shards

FORMAT = 'vftok-token-records/1'


def tokenize_records(config, workdir: str, tokenizer, *, tokenizer_step=None,
                     text_encoder=None):
  """Tokenizes this worker's shards of config.input into `workdir`;
  finalizes if every shard is done -> the manifest (None while shards remain).

  tokenizer: an api.Tokenizer (anything with tokenize / levels / latent_shape
  / tokens_per_frame / config); tokenizer_step: the step it was loaded at (for
  the plan); text_encoder: a models/pretrained/text_encoders.TextEncoder
  whose caption embeddings are stored beside the tokens, so the AR trainer
  (config.text.source='records') needs no text model per step."""
  if config.finalize:
    return finalize(workdir)
  worker, workers = shards.resolve_worker(config)

  # ---- inputs, normalisation and plan ----------------------------------------
  paths = input_files(config)
  stats_dir = config.stats_from or os.path.dirname(paths[0])
  manifest = records.read_manifest(stats_dir)
  normalize = config.normalize or tokenizer.config.data.get('normalize',
                                                            'global')
  data = pipeline.Data('', '', manifest, normalize=normalize)
  mean, std = data.latent_mean, data.latent_std
  if mean is None and normalize != 'none':
    raise errors.InputError(f'{stats_dir}/manifest.json has no latent_mean '
                            '/ latent_std to normalise with: pass '
                            '--config.stats_from=<the encode_videos workdir>')
  levels = tuple(int(x) for x in tokenizer.levels)
  vocab = int(np.prod(levels))
  if vocab > 1 << 16:
    raise ValueError(f'{vocab} codes do not fit the uint16 token records')
  # The records' own manifest (shapes, long-clip chunks); the stats may
  # come from another set's (stats_from).
  in_dir = os.path.dirname(paths[0])
  records_manifest = manifest if os.path.abspath(stats_dir) == (
      os.path.abspath(in_dir)) else (records.read_manifest(in_dir) if (
          os.path.exists(os.path.join(in_dir, records.MANIFEST))) else {})
  t, h, w, c = tokenizer.latent_shape
  shape = records_manifest.get('latent_shape')
  if shape and list(shape[1:]) != [h, w, c]:
    raise errors.InputError(f'the records hold latents {shape}; the '
                            f'tokenizer expects [T, {h}, {w}, {c}]')
  keep = int(config.get('tokens_per_frame', 0)) or tokenizer.tokens_per_frame
  if not 1 <= keep <= tokenizer.tokens_per_frame:
    raise errors.InputError(
        f'config.tokens_per_frame={keep}: the tokenizer has '
        f'{tokenizer.tokens_per_frame} tokens per latent frame (0: all)')
  long_clip = records_manifest.get('chunks', {}).get('num_frames', 0)
  n = len(paths)
  tok_dir = config.tokenizer_workdir
  os.makedirs(workdir, exist_ok=True)
  plan = shards.check_plan(workdir, dict(
      format='vftok-tokenize-plan/1', input=config.input, split=config.split,
      num_shards=n, inputs=[os.path.basename(p) for p in paths],
      tokenizer=dict(workdir=tok_dir, step=(
          config.tokenizer_step if config.tokenizer_step >= 0 or not tok_dir
          else tokenizer_step), fsq_levels=list(levels),
                     tokens_per_frame=tokenizer.tokens_per_frame,
                     time_patch=tokenizer.config.model.patch_size[0]),
      normalize=normalize, latent_mean=mean, latent_std=std,
      stats_from=stats_dir, vocab_size=vocab,
      text_encoder=config.get('text_encoder', ''),
      text_path=config.get('text_path', ''),
      text_max_length=config.get('text_max_length', 64),
      # Only when set, so plans written before these options still match.
      **({'tokens_per_frame': keep}
         if keep != tokenizer.tokens_per_frame else {}),
      **({'long_clip_frames': long_clip} if long_clip else {})),
      ignore=('input', 'stats_from'))
  todo = [s for s in shards.assigned(n, worker, workers)
          if not shards.is_done(workdir, shards.shard_name(config.split, s, n))]
  logging.info('%d latent files -> %d token shards; worker %d/%d: %d to do',
               n, n, worker, workers, len(todo))

  # ---- tokenize --------------------------------------------------------------
  progress = shards.Progress(f'worker {worker}/{workers}', 'clips',
                             config.log_every_s)
  for s in todo:
    _tokenize_shard(config, workdir, paths[s], tokenizer, mean, std, s, n,
                    progress, text_encoder, keep=keep, long_clip=long_clip)
  if todo:
    progress.log(f'{len(todo)} shards done')

  # ---- finalize --------------------------------------------------------------
  if shards.collect(workdir, config.split, n)[1]:
    logging.info('shards still to do by other workers; the last worker to '
                 'finish (or --config.finalize=True) writes manifest.json')
    return None
  return finalize(workdir, plan)


def input_files(config):
  """The latent record files of config.input (checked before anything is
  loaded or written)."""
  return records.require_files('input', config.input, 'latent record',
                               records.make_latents_hint('input'))


def _read_chunks(path: str, size: int):
  reader = array_record_module.ArrayRecordReader(path)
  try:
    total = reader.num_records()
    for i in range(0, total, size):
      yield [records.deserialize(b)
             for b in reader.read(i, min(i + size, total))]
  finally:
    reader.close()


def _tokenize(tokenizer, lat, long_clip: int):
  """Latents [b, T, h, w, C] -> ids [b, T', K]; a long clip's per-chunk
  latents through tokenize_long ([21, K] for 81 frames)."""
  if not long_clip:
    return np.asarray(tokenizer.tokenize(lat))
  return np.asarray(tokenizer.tokenize_long(
      chunks.split_latents(lat, long_clip)))


def _tokenize_shard(config, workdir, path, tokenizer, mean, std, s, n,
                    progress, text_encoder=None, *, keep: int,
                    long_clip: int = 0):
  name = shards.shard_name(config.split, s, n)
  shards.remove_stale(workdir, name)
  t0 = time.time()
  b = config.batch_size
  shapes = set()

  def examples():
    for chunk in _read_chunks(path, b):
      lat = np.stack([ex['latents'] for ex in chunk]).astype(np.float32)
      if mean is not None:  # normalize='none': raw latents, as the release
        lat = (lat - mean) / std
      # A fixed batch shape: one compilation for the whole run.
      pad = np.zeros((b - len(lat),) + lat.shape[1:], np.float32)
      ids = _tokenize(tokenizer, np.concatenate([lat, pad]), long_clip)
      ids = ids[:len(chunk), :, :keep].astype(np.uint16)
      text = [None] * len(chunk)
      if text_encoder is not None:
        emb, mask = text_encoder.encode([ex['caption'] for ex in chunk],
                                        config.text_max_length)
        text = list(zip(np.asarray(emb).astype(np.float16),
                        np.asarray(mask).astype(np.uint8)))
      for ex, tok, tx in zip(chunk, ids, text):
        shapes.add(tok.shape)
        out = dict(tokens=tok, label=int(ex['label']),
                   caption=ex['caption'], source=ex['source'])
        if tx is not None:
          out['text_emb'], out['text_mask'] = tx
        yield out
      progress.add(len(chunk), name)

  count = records.write_token_records(os.path.join(workdir, name), examples())
  shards.commit(workdir, name, dict(
      shard=s, input=os.path.basename(path), records=count,
      tokens_shapes=sorted(list(x) for x in shapes),
      seconds=round(time.time() - t0, 3)))


def finalize(workdir: str, plan=None):
  """Merges the shard stats into manifest.json -> the manifest."""
  plan = plan or shards.read_plan(workdir)
  split, n = plan['split'], plan['num_shards']
  stats = shards.require_all(workdir, split, n)
  shapes = sorted({tuple(x) for st in stats for x in st['tokens_shapes']})
  manifest = dict(
      format=FORMAT, split=split,
      counts={split: sum(st['records'] for st in stats)}, shards={split: n},
      pattern=shards.shard_pattern(split),
      tokens_shape=list(shapes[0]) if len(shapes) == 1 else
      [list(x) for x in shapes],
      tokens_dtype='uint16', vocab_size=plan['vocab_size'],
      fields={split: ['tokens', 'label', 'caption', 'source'] + (
          ['text_emb', 'text_mask'] if plan.get('text_encoder') else [])},
      text_encoder=plan.get('text_encoder', ''),
      tokenizer=plan['tokenizer'], normalize=plan['normalize'],
      latent_mean=plan['latent_mean'], latent_std=plan['latent_std'],
      inputs=plan['inputs'])
  if plan.get('long_clip_frames'):
    manifest['num_frames'] = plan['long_clip_frames']
  records.write_manifest(workdir, manifest)
  logging.info('%s: %d token records in %d shards', workdir,
               manifest['counts'][split], n)
  return manifest


def _conditional_entropy(groups: np.ndarray, tokens: np.ndarray) -> float:
  """H(token | group) in nats, the plug-in estimate over these records."""
  (g, _), joint = np.unique(np.stack([groups, tokens]), axis=1,
                            return_counts=True)
  _, which = np.unique(g, return_inverse=True)
  p_token_given_group = joint / np.bincount(which, weights=joint)[which]
  return float(-(joint / joint.sum() * np.log(p_token_given_group)).sum())


def statistics(pattern: str) -> dict:
  """How hard the token records are to model: the codes in use and the
  entropies (nats per token) that lookup tables of their frequencies reach
  on these records (plug-in estimates, so on the low side): `unigram` one
  table for all, `per_slot` one per (frame, level) slot, `per_slot_class`
  one per slot and label. A next-token model's training loss above
  `per_slot_class` has not yet learned what a table of counts knows."""
  examples = records.read_records(pattern)
  if not examples:
    raise errors.InputError(f'the token records {pattern!r} hold no clips')
  tokens = np.stack([np.asarray(e['tokens'], np.int64) for e in examples])
  labels = np.asarray([int(e.get('label', -1)) for e in examples], np.int64)
  n, t, k = tokens.shape
  slots = np.broadcast_to(np.arange(t * k).reshape(1, t, k), tokens.shape)
  flat = tokens.reshape(-1)
  by_slot = slots.reshape(-1)
  by_slot_class = (slots + t * k * (labels[:, None, None] + 1)).reshape(-1)
  return dict(clips=int(n), tokens_shape=[int(t), int(k)],
              distinct_codes=int(np.unique(flat).size),
              unigram=_conditional_entropy(np.zeros_like(flat), flat),
              per_slot=_conditional_entropy(by_slot, flat),
              per_slot_class=_conditional_entropy(by_slot_class, flat))
