"""Writes a vftok tokenizer workdir from a released VideoFlexTok checkpoint.

Phases: read + check the release file (nothing is written before it has
loaded) -> the trainer's state with the converted parameters -> Orbax
checkpoint at step 0 -> config.json (atomically, last: a workdir is complete
exactly when it has one).
"""
import os

from absl import logging
import jax

from vftok import api
from vftok import checkpoint
from vftok import errors
from vftok import sharding
from vftok import training


_RELEASE = ('a released VideoFlexTok model.safetensors, downloaded by hand '
            '(e.g. from huggingface.co/EPFL-VILAB/videoflextok_d18_d18_k600; '
            'nothing is downloaded here)')


def run(config, workdir: str):
  if not config.path:
    raise errors.InputError(f'config.path is not set: pass --config.path='
                            f'FILE, {_RELEASE}')
  if not os.path.isfile(os.path.expanduser(config.path)):
    raise errors.InputError(f'config.path={config.path!r} does not exist: '
                            f'pass {_RELEASE}')
  if os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)):
    raise errors.InputError(f'{workdir} already holds a vftok workdir '
                            f'({checkpoint.CONFIG_FILE}); choose an empty '
                            'directory')

  # ---- release -> tokenizer (validates everything first) ---------------------
  tok = api.Tokenizer.from_official(config.path, tuple(config.latent_shape))
  tconfig = tok.config
  tconfig.seed = config.seed
  m = tconfig.model
  logging.info('converted %s: d%d-d%d, widths %d/%d, K=%d, decoder %s',
               config.path, m.enc_depth, m.dec_depth, m.enc_width, m.dec_width,
               m.tokens_per_frame, m.decoder_attention)

  # ---- the trainer's state, converted params in place ------------------------
  task = training.tokenizer_task(tconfig, with_teacher=False)
  mesh = sharding.make_mesh(tconfig.mesh, devices=jax.devices()[:1])
  state, shardings = sharding.create_sharded_state(
      task.init_fn,
      jax.random.key(config.seed), mesh)
  params = dict(state.params['params'])
  for part in ('encoder', 'decoder'):
    params[part] = jax.tree.map(lambda a, s: jax.device_put(a, s),
                                tok.params['params'][part],
                                shardings.params['params'][part])
  state = state.replace(params={'params': params})

  # ---- checkpoint, then config.json ------------------------------------------
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, checkpoint.CHECKPOINT_DIR), async_save=False)
  try:
    ckpt.maybe_save(0, state, force=True)
  finally:
    ckpt.close()
  checkpoint.write_workdir_config(tconfig, workdir)
  logging.info('wrote %s', workdir)
