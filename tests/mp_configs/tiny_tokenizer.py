"""configs/demo.py at test size (as tests/test_train_job.py's e2e_config), for
the multi-process tests: `--config=tests/mp_configs/tiny_tokenizer.py:DATA_ROOT`
(DATA_ROOT: a demo set built at resolution 32)."""
import importlib.util
import os

_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                     'configs', 'demo.py')


def get_config(data_root):
  spec = importlib.util.spec_from_file_location('demo_config', _DEMO)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data.root = data_root
  c.data.resolution = 32
  c.data.global_batch_size = 8
  m = c.model
  m.latent_size, m.patch_size, m.tokens_per_frame = (4, 4), (1, 1, 1), 4
  m.enc_depth = m.dec_depth = 1
  m.enc_width = m.dec_width = 32
  m.head_dim = 16
  c.optim.warmup_steps = 2
  t = c.train
  t.total_steps, t.log_every, t.checkpoint_every, t.eval_every = 6, 1, 3, 6
  c.eval.num_clips, c.eval.sample_steps = 2, 2
  return c
