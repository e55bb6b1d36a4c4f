"""Demo stage 2: fine-tune the demo tokenizer's decoder (frozen encoder, full
attention, first-frame conditioning) on the CPU.

    python -m vftok.main --config=configs/demo.py --workdir=/tmp/vftok_demo
    python -m vftok.main --config=configs/demo_stage2.py --workdir=/tmp/vftok_demo2 \
        --config.train.init_from=/tmp/vftok_demo

Writes the same PSNR table and reconstruction picture as stage 1 (compare
/tmp/vftok_demo/psnr_400.md with /tmp/vftok_demo2/psnr_200.md).
"""
import importlib.util
import os

from vftok import defaults


def _demo_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
  spec = importlib.util.spec_from_file_location('vftok_demo_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  del arg
  config = defaults.decoder_finetune(_demo_config(), init_from='/tmp/vftok_demo')
  config.optim.warmup_steps = 20
  config.train.total_steps = 200
  config.train.eval_every = 200
  config.train.checkpoint_every = 100
  return config
