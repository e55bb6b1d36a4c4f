"""Compute-optimal AR training plan for a FLOPs budget (Sec. 4.1, App. F.2).

The paper's rule for the text-to-video sweep:
  * Chinchilla's D ~= 20 N training tokens, with C ~= 6 N D, so the optimum
    for a budget C is N = sqrt(C / 120).
  * N counts the non-embedding parameters plus the output head
    (`ar.scaling_params`); with it Table 7's lengths (3.25B, 12B, 38B, 101B
    tokens for depths 12, 20, 30, 42) come out to 3 digits.
  * The batch (videos) grows with sqrt(D), rounded down to a power of 2:
    batch = 2^floor(log2(sqrt(D / 128000))), i.e. sqrt(#1280-token videos
    / 100). Table 7's batches 128, 256, 512, 512 bound the constant to
    (0.96e5, 1.44e5] tokens; 1.28e5 is a round value inside (an anchor at
    exactly 512 videos for 38B tokens would sit on the boundary: d30's
    20 N = 37.9B would round down to 256). The 4x over-trained 5.2B
    model keeps 512, so the batch follows the compute-optimal D = 20 N of
    the model size, not the (over-)trained length. It is a batch of videos:
    --tokens_per_video changes only the number of steps.
  * Learning rate 1.024 / width (Tables 6-7: 1.6e-3 at d10 ... 4.4e-4 at d36),
    warmup 2.5% of the training tokens.

Usage:  python -m vftok.models.compute_plan --flops=1e20 [--tokens_per_video=1280]
"""
import argparse
import dataclasses
import math
from typing import Optional, Sequence

from vftok.models import ar_config as ar

TOKENS_PER_PARAM = 20.0
BATCH_TOKENS_SCALE = 1.28e5      # batch = sqrt(D / this), see above
LR_TIMES_WIDTH = 1.024                               # lr = 1.024 / width
WARMUP_FRACTION = 0.025
PAPER_DEPTHS = tuple(sorted(set(ar.PAPER_C2V_DEPTHS + ar.PAPER_T2V_DEPTHS)))


@dataclasses.dataclass(frozen=True)
class Plan:
  depth: int
  width: int
  params: int            # N
  tokens: float          # D
  flops: float           # 6 N D
  batch_size: int        # videos per step
  steps: int
  learning_rate: float
  warmup_tokens: float
  tokens_per_video: int


def model_params(depth: int, conditioning: str = 'text',
                 vocab_size: int = 64000) -> int:
  """N of the paper-shaped model of this depth (no allocation)."""
  if conditioning not in ('text', 'class'):
    raise ValueError(f'conditioning must be text or class: {conditioning!r}')
  text = conditioning == 'text'
  config = ar.ARConfig(depth=depth, vocab_size=vocab_size,
                       num_classes=0 if text else 600,
                       text_dim=64 * depth if text else 0)
  return ar.analytic_param_counts(config)['scaling']


def depth_nearest_total(total_params: float, depths=range(8, 65),
                        **fields) -> int:
  """The depth whose paper-shaped model (width 64 d; ARConfig `fields`,
  e.g. text_dim, num_frames) has the total parameter count nearest
  `total_params` (the paper names its models by totals: '3.2B')."""
  def total(depth):
    extra = dict(fields)
    if extra.get('text_dim') == 'width':   # a text input as wide as the model
      extra['text_dim'] = 64 * depth
    return ar.analytic_param_counts(ar.ARConfig(depth=depth, **extra))['total']
  return min(depths, key=lambda d: abs(total(d) - total_params))


def optimal_params(flops: float, overtrain: float = 1.0) -> float:
  """N with 6 N (overtrain * 20 N) = C."""
  return math.sqrt(flops / (6.0 * TOKENS_PER_PARAM * overtrain))


def batch_size(optimal_tokens: float) -> int:
  """Videos per step: sqrt(D / 1.28e5) rounded down to a power of 2."""
  raw = math.sqrt(optimal_tokens / BATCH_TOKENS_SCALE)
  return 2 ** max(0, math.floor(math.log2(raw)))


def continuous_depth(n_params: float, conditioning: str = 'text') -> float:
  """Real depth whose (width 64 d, exact 8/3 SwiGLU) model has N params."""
  per_block = 16 if conditioning == 'text' else 12  # x width^2
  n_of = lambda d: per_block * (64 * d) ** 2 * d + 64 * d * 64000
  lo, hi = 0.1, 1000.0
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if n_of(mid) < n_params else (lo, mid)
  return 0.5 * (lo + hi)


def choose_depth(flops: float, conditioning: str = 'text',
                 depths: Optional[Sequence[int]] = PAPER_DEPTHS,
                 overtrain: float = 1.0) -> int:
  """Depth whose N is nearest (in log) to the optimum; depths=None: any."""
  target = math.log(optimal_params(flops, overtrain))
  if depths is None:
    guess = int(round(continuous_depth(math.exp(target), conditioning)))
    depths = range(max(1, guess - 2), guess + 3)
  return min(depths, key=lambda d: abs(
      math.log(model_params(d, conditioning)) - target))


def plan_for_depth(depth: int, *, tokens_per_video: int = 1280,
                   conditioning: str = 'text', overtrain: float = 1.0) -> Plan:
  n = model_params(depth, conditioning)
  optimal_tokens = TOKENS_PER_PARAM * n
  tokens = overtrain * optimal_tokens
  batch = batch_size(optimal_tokens)
  return Plan(depth=depth, width=64 * depth, params=n, tokens=tokens,
              flops=6.0 * n * tokens, batch_size=batch,
              steps=int(round(tokens / (batch * tokens_per_video))),
              learning_rate=LR_TIMES_WIDTH / (64 * depth),
              warmup_tokens=WARMUP_FRACTION * tokens,
              tokens_per_video=tokens_per_video)


def plan(flops: float, *, tokens_per_video: int = 1280,
         conditioning: str = 'text', overtrain: float = 1.0,
         any_depth: bool = False) -> Plan:
  """The compute-optimal plan for a budget: paper depths unless any_depth.

  The depth is rounded, so plan.flops is near, not equal to, `flops`.
  """
  depth = choose_depth(flops, conditioning,
                       None if any_depth else PAPER_DEPTHS, overtrain)
  return plan_for_depth(depth, tokens_per_video=tokens_per_video,
                        conditioning=conditioning, overtrain=overtrain)


def _fmt(x: float) -> str:
  for unit, scale in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(x) >= scale:
      return f'{x / scale:.3g}{unit}'
  return f'{x:.3g}'


def format_table(flops: float, tokens_per_video: int = 1280,
                 conditioning: str = 'text', overtrain: float = 1.0) -> str:
  n_opt = optimal_params(flops, overtrain)
  d_opt = continuous_depth(n_opt, conditioning)
  d_tokens = overtrain * TOKENS_PER_PARAM * n_opt
  batch = batch_size(TOKENS_PER_PARAM * n_opt)
  rows = [('continuous optimum', f'{d_opt:.1f}', f'{64 * d_opt:.0f}',
           _fmt(n_opt), _fmt(d_tokens), f'{flops:.2e}', str(batch),
           f'{d_tokens / (batch * tokens_per_video):.0f}',
           f'{LR_TIMES_WIDTH / (64 * d_opt):.3g}')]
  for label, any_depth in (('nearest paper depth', False),
                           ('nearest integer depth', True)):
    p = plan(flops, tokens_per_video=tokens_per_video,
             conditioning=conditioning, overtrain=overtrain,
             any_depth=any_depth)
    rows.append((label, str(p.depth), str(p.width), _fmt(p.params),
                 _fmt(p.tokens), f'{p.flops:.2e}', str(p.batch_size),
                 str(p.steps), f'{p.learning_rate:.3g}'))
  head = ('', 'depth', 'width', 'N', 'D', 'C=6ND', 'batch', 'steps', 'lr')
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  line = lambda r: '  '.join(s.ljust(w) if i == 0 else s.rjust(w)
                             for i, (s, w) in enumerate(zip(r, widths)))
  title = (f'budget C = {flops:.2e} FLOPs, {conditioning}-conditioned, '
           f'{tokens_per_video} tokens/video, D = {overtrain:g} x 20 N, '
           f'batch = 2^floor(log2(sqrt(20 N / {BATCH_TOKENS_SCALE:.3g})))')
  return '\n'.join([title, line(head)] + [line(r) for r in rows])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--flops', type=float, required=True)
  parser.add_argument('--tokens_per_video', type=int, default=1280)
  parser.add_argument('--conditioning', choices=('text', 'class'),
                      default='text')
  parser.add_argument('--overtrain', type=float, default=1.0,
                      help='train D = overtrain * 20 N (batch unchanged)')
  args = parser.parse_args(argv)
  print(format_table(args.flops, args.tokens_per_video, args.conditioning,
                     args.overtrain))


if __name__ == '__main__':
  main()
