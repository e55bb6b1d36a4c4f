"""The training job end to end on the embedded demo data (tiny sizes).

Covers: the job writes checkpoints, metrics, the reconstruction picture and
the PSNR table; a run preempted at step 3 and resumed reproduces the loss
curve of an uninterrupted run exactly; Tokenizer.from_checkpoint loads it.
"""

import jax
import numpy as np
import pytest

import vftok
from vftok import checkpoint
from vftok import defaults
from vftok.jobs import train_tokenizer

from testing_utils import Recorder
from testing_utils import load_config


def e2e_config(data_root):
  c = load_config('demo')
  c.data.root = str(data_root)
  c.data.resolution = 32
  c.data.global_batch_size = 8  # divisible by the 8 simulated devices
  m = c.model
  m.latent_size, m.patch_size, m.registers = (4, 4), (1, 1, 1), 4
  m.enc_depth = m.dec_depth = 1
  m.enc_width = m.dec_width = 32
  m.head_dim = 16  # repa_dim stays the demo teacher's (I3D Mixed_3c, 480)
  c.optim.warmup_steps = 2
  c.train.total_steps = 6
  c.train.log_every = 1
  c.train.checkpoint_every = 3
  c.train.eval_every = 6
  c.eval.num_clips = 2
  c.eval.sample_steps = 2
  return c


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  # A small demo set (64 train clips, with their I3D REPA features); the job
  # then finds it built and uses it as is.
  from vftok.data import demo
  root = tmp_path_factory.mktemp('demo_data')
  demo.ensure_demo_dataset(str(root), 17, 32, max_clips_per_video=16,
                           eval_clips_per_video=1, clips_per_shard=32)
  return root


def losses(rec):
  return [rec.scalars[s]['loss'] for s in sorted(rec.scalars)
          if 'loss' in rec.scalars[s]]


def test_preempt_and_resume_reproduces_the_loss_curve(data_root, tmp_path,
                                                      monkeypatch):
  c = e2e_config(data_root)
  full = Recorder()
  train_tokenizer.run(c, str(tmp_path / 'full'), writer=full)
  assert len(losses(full)) == 6

  # Preempted at step 3 (as on SIGTERM): checkpoint, exit, rerun resumes.
  first = Recorder()
  monkeypatch.setattr(checkpoint.PreemptionGuard, 'should_stop',
                      lambda self, step: step == 3)
  train_tokenizer.run(c, str(tmp_path / 'cut'), writer=first)
  assert sorted(first.scalars) == [1, 2, 3]
  assert checkpoint.Checkpointer(str(tmp_path / 'cut' / 'checkpoints')
                                 ).latest_step() == 3
  monkeypatch.undo()
  second = Recorder()
  train_tokenizer.run(c, str(tmp_path / 'cut'), writer=second)
  assert min(second.scalars) == 4
  np.testing.assert_allclose(losses(first) + losses(second), losses(full),
                             rtol=1e-6)

  # Outputs a researcher looks at.
  out = tmp_path / 'full'
  assert (out / 'recon_6.png').exists() and (out / 'psnr_6.md').exists()
  table = (out / 'psnr_6.md').read_text()
  for k in (1, 2, 4):
    assert f'| {k} |' in table
  eval_scalars = full.scalars[6]
  assert np.isfinite(eval_scalars['eval/psnr_k=4'])

  # The checkpoint loads through the public API.
  tok = vftok.Tokenizer.from_checkpoint(str(out))
  assert tok.tokens_per_frame == 4 and tok.latent_shape == (5, 4, 4, 16)
  x = np.random.default_rng(0).normal(size=(1, 5, 4, 4, 16)).astype(np.float32)
  tokens = tok.tokenize(x)
  assert tokens.shape == (1, 5, 4)
  assert tok.detokenize(tokens[:, :, :2], steps=2).shape == (1, 5, 4, 4, 16)

  # Stage 2 from this run: encoder bit-identical, decoder trained further.
  s2 = defaults.decoder_finetune(e2e_config(data_root), init_from=str(out))
  s2.train.total_steps, s2.train.eval_every = 2, 2
  train_tokenizer.run(s2, str(tmp_path / 'stage2'), writer=Recorder())
  tok2 = vftok.Tokenizer.from_checkpoint(str(tmp_path / 'stage2'))
  enc1, enc2 = (jax.tree.leaves(t.params['params']['encoder']) for t in (tok, tok2))
  for a, b in zip(enc1, enc2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  dec1, dec2 = (jax.tree.leaves(t.params['params']['decoder']) for t in (tok, tok2))
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(dec1, dec2))
  np.testing.assert_array_equal(np.asarray(tok2.tokenize(x)), np.asarray(tokens))
  out2 = np.asarray(tok2.detokenize(tokens[:, :, :2], steps=2, first_frame=x[:, 0]))
  np.testing.assert_array_equal(out2[:, 0], x[:, 0])
  with pytest.raises(ValueError, match='init_from'):
    train_tokenizer.run(defaults.decoder_finetune(e2e_config(data_root)),
                        str(tmp_path / 'no_init'), writer=Recorder())
