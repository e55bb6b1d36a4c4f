"""A user's mistake in a job's inputs is one FATAL line, before the workdir.

Every job (vftok.main.JOBS) checks its inputs (data patterns, checkpoints,
weights paths) before it writes anything: a missing one exits with one line
`FATAL config.<field>=... <what is wrong>; make them with: <command>` and no
traceback, and the workdir is not created. No paper config trains REPA
against the random stand-in, and a config that does is warned about.
"""
import ast
import importlib
import itertools
import logging
import os
import re
import subprocess
import sys

import pytest

from vftok import errors
from vftok import main
from vftok.models.pretrained import features

from testing_utils import load_config
from testing_utils import ROOT
from testing_utils import tiny_tokenizer_config

MISSING = '{tmp}/missing'   # a path that does not exist

# job -> (config file, its argument, overrides pointing its inputs at nothing,
#         the field the FATAL line names, how it says to make the input)
CASES = {
    'train_tokenizer': ('tokenizer_k600', None, {},
                        "config.data.train_pattern=''",
                        '--config=configs/encode_videos.py'),
    'encode_videos': ('encode_videos', None, {'input': MISSING},
                      "config.input='{tmp}/missing'",
                      'a folder, a .csv/.jsonl manifest'),
    'tokenize_dataset': ('tokenize_dataset', None, {}, "config.input=''",
                         '--config=configs/encode_videos.py'),
    'eval_tokenizer': ('eval_tokenizer', None, {'checkpoint': MISSING},
                       "config.checkpoint='{tmp}/missing'",
                       'make one with configs/tokenizer_k600.py'),
    'train_classifier': ('train_classifier', None, {'data.kind': 'records'},
                         "config.data.train_pattern=''",
                         '--config=configs/encode_videos.py'),
    'train_ar': ('ar_c2v_k600', None, {}, "config.data.train_pattern=''",
                 '--config=configs/tokenize_dataset.py'),
    'sample_ar': ('sample_ar', None, {'ar_workdir': MISSING},
                  "config.ar_workdir='{tmp}/missing'",
                  'make one with configs/ar_c2v_k600.py'),
    'eval_ar': ('eval_ar', None, {'ar_workdir': MISSING},
                "config.ar_workdir='{tmp}/missing'",
                'make one with configs/ar_c2v_k600.py'),
    'convert_official': ('convert_official', None, {'path': MISSING},
                         "config.path='{tmp}/missing'",
                         'a released VideoFlexTok model.safetensors'),
    'reconstruct': ('reconstruct', None, {'video': MISSING},
                    "config.video='{tmp}/missing'", 'no such file'),
    'compress': ('compress', None, {'video': MISSING},
                 "config.video='{tmp}/missing'", 'no such file'),
    'eval_budgets': ('eval_budgets', None, {'checkpoint': MISSING},
                     "config.checkpoint='{tmp}/missing'",
                     'neither a tokenizer bundle'),
    'export_tokenizer': ('export_tokenizer', None, {'checkpoint': MISSING},
                         "config.checkpoint='{tmp}/missing'",
                         'make one with configs/tokenizer_k600.py'),
    'paper_mini': ('paper_mini', None, {'tokenizer_workdir': MISSING},
                   "config.tokenizer_workdir='{tmp}/missing'",
                   'make one with configs/tokenizer_k600.py'),
}


def _set(config, dotted, value):
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def _fatal(job: str, config, workdir) -> str:
  """main.run_job's exit message for `config` (asserted to be one line)."""
  with pytest.raises(SystemExit) as e:
    main.run_job(importlib.import_module(main.job_module(job)), config,
                 str(workdir))
  message = e.value.code
  assert isinstance(message, str) and message.startswith('FATAL '), message
  assert '\n' not in message, message
  return message


def test_every_job_has_a_case():
  assert set(CASES) == set(main.JOBS)


@pytest.mark.parametrize('job', sorted(CASES))
def test_missing_input_is_one_fatal_line_before_the_workdir(job, tmp_path):
  name, arg, overrides, field, how = CASES[job]
  config = load_config(name, arg)
  assert config.job == job
  for dotted, value in overrides.items():
    _set(config, dotted, value.format(tmp=tmp_path))
  workdir = tmp_path / 'workdir'
  message = _fatal(job, config, workdir)
  assert message.startswith(f'FATAL {field.format(tmp=tmp_path)}'), message
  assert how in message, message
  assert not workdir.exists()


def test_train_tokenizer_checks_teacher_and_stage1_before_the_workdir(
    tmp_path):
  """The paper's stage 2, its inputs given one by one: data, the DINOv2
  weights, the stage-1 workdir; each missing one is named first."""
  (tmp_path / 'train-0.array_record').write_bytes(b'')
  c = load_config('tokenizer_k600', 'stage2')
  c.data.train_pattern = str(tmp_path / 'train-*.array_record')
  workdir = tmp_path / 'workdir'
  steps = [
      ('model.repa_teacher_path', '',
       'FATAL config.model.repa_source=\'dinov2\' needs config.model.'
       'repa_teacher_path: pass --config.model.repa_teacher_path=DIR'),
      ('model.repa_teacher_path', str(tmp_path / 'dino'),
       f"FATAL config.model.repa_teacher_path='{tmp_path}/dino' does not "
       'exist: pass a local Hugging Face DINOv2 directory'),
      ('train.init_from', '',
       'FATAL the encoder is frozen (stage 2) but config.train.init_from '
       'names no stage-1 workdir'),
      ('train.init_from', str(tmp_path / 'stage1'),
       f"FATAL config.train.init_from='{tmp_path}/stage1' does not exist or "
       'is not a directory: pass the --workdir of a train_tokenizer run'),
  ]
  for i, (dotted, value, want) in enumerate(steps):
    if i == 2:
      (tmp_path / 'dino').mkdir()   # found now (it is not read before steps)
    _set(c, dotted, value)
    message = _fatal('train_tokenizer', c, workdir)
    assert message.startswith(want), message
  assert not workdir.exists()


def test_train_ar_demo_tokens_need_a_tokenizer_first(tmp_path):
  workdir = tmp_path / 'workdir'
  message = _fatal('train_ar', load_config('ar_demo'), workdir)
  assert message.startswith(
      "FATAL data.kind='demo_tokens' needs config.tokenizer.checkpoint: pass "
      '--config.tokenizer.checkpoint=DIR'), message
  c = load_config('ar_demo')
  c.tokenizer.checkpoint = str(tmp_path / 'tok')
  message = _fatal('train_ar', c, workdir)
  assert message.startswith(
      f"FATAL config.tokenizer.checkpoint='{tmp_path}/tok' does not exist"), \
      message
  assert not workdir.exists()  # nor its demo_tokens cache


def test_headline_command_without_records(tmp_path):
  """The README's first command before any records exist: one FATAL line
  with the encode_videos command, no traceback, no workdir."""
  workdir = tmp_path / 'run'
  r = subprocess.run(
      [sys.executable, '-m', 'vftok.main', '--config=configs/tokenizer_k600.py',
       f'--workdir={workdir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': ROOT})
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(
      "FATAL config.data.train_pattern='' matches no latent record files; "
      'make them with: python -m vftok.main --config=configs/encode_videos.py '
      '--workdir=/data/k600-latents --config.input=/videos/k600/train '
      '--config.label_from_dir=True --config.num_frames=17 '
      '--config.resolution=128 --config.codec=vidtok'), last
  assert last.endswith("then pass --config.data.train_pattern="
                       "'/data/k600-latents/train-*.array_record'"), last
  assert 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert not workdir.exists()


# ---- REPA: never the random stand-in unless a test asks for it ------------

def _paper_args(name):
  """Every argument combination configs/<name>.py accepts but 'runlocal'
  (the CPU smoke test), read from its own error message."""
  with pytest.raises(ValueError, match='choose from') as e:
    load_config(name, 'no-such-argument')
  allowed = ast.literal_eval(re.search(r'choose from (\[.*\])',
                                       str(e.value)).group(1))
  flags = sorted(set(allowed) - {'runlocal'})
  return [','.join(c) for n in range(len(flags) + 1)
          for c in itertools.combinations(flags, n)]


@pytest.mark.parametrize('name', ['tokenizer_k600', 'tokenizer_panda'])
def test_paper_configs_never_train_repa_against_the_random_stand_in(name):
  args = _paper_args(name)
  assert '' in args
  for arg in args:
    m = load_config(name, arg or None).model
    assert m.repa_source != 'random_stand_in', (name, arg)
    if m.repa_weight > 0:
      assert m.repa_source in features.PRETRAINED, (name, arg)
  assert load_config('tokenizer_k600', 'stage2').model.repa_weight > 0


def test_random_stand_in_is_warned_about(caplog):
  c = tiny_tokenizer_config()
  with caplog.at_level(logging.WARNING):
    features.get(c.model)
  warned = [r for r in caplog.records if 'random_stand_in' in r.getMessage()]
  assert len(warned) == 1 and 'RANDOM' in warned[0].getMessage()
  caplog.clear()
  c.model.repa_source, c.model.repa_dim = 'records', 5
  with caplog.at_level(logging.WARNING):
    features.get(c.model)
  assert not caplog.records
  # No teacher at all is built (nor warned about) without a REPA loss.
  c.model.repa_source, c.model.repa_weight = 'random_stand_in', 0.0
  with caplog.at_level(logging.WARNING):
    features.get(c.model)
  assert not caplog.records


def test_repa_source_check():
  m = tiny_tokenizer_config().model
  m.repa_source = 'dinov3'
  with pytest.raises(errors.InputError, match="repa_source='dinov3' is not"):
    features.check(m)
  m.repa_source = 'dinov2'
  with pytest.raises(errors.InputError, match='needs config.model.'
                     'repa_teacher_path'):
    features.check(m)
  m.repa_weight = 0.0   # no REPA loss: no teacher weights needed
  features.check(m)
