"""Attention masks derived from per-token (frame index, role, register index).

Every sequence in the tokenizer is a concatenation of per-latent-frame groups.
A `Layout` records, for each position, which latent frame it belongs to, its
role (latent patch or register) and its register index. Masks are pure
functions of two layouts, so that the same description can later drive a fused
attention kernel (segment ids / block masks) instead of a dense boolean mask.

All masks are built with NumPy at trace time: the layout is static.
"""
import dataclasses

import numpy as np

PATCH = 0
REGISTER = 1


@dataclasses.dataclass(frozen=True)
class Layout:
  frame: np.ndarray     # int32 [L]: latent frame index of each token
  role: np.ndarray      # int32 [L]: PATCH or REGISTER
  register: np.ndarray  # int32 [L]: register index (-1 for patches)

  def __len__(self):
    return len(self.frame)

  @property
  def is_register(self) -> np.ndarray:
    return self.role == REGISTER


def interleaved(num_frames: int, patches_per_frame: int, registers: int,
                registers_first: bool) -> Layout:
  """Per frame t: [p_t, r_t] (encoder) or [r_t, p_t] (decoder)."""
  roles = ([REGISTER] * registers + [PATCH] * patches_per_frame
           if registers_first else
           [PATCH] * patches_per_frame + [REGISTER] * registers)
  reg_idx = ([*range(registers)] + [-1] * patches_per_frame
             if registers_first else
             [-1] * patches_per_frame + [*range(registers)])
  per = patches_per_frame + registers
  return Layout(
      frame=np.repeat(np.arange(num_frames, dtype=np.int32), per),
      role=np.tile(np.asarray(roles, np.int32), num_frames),
      register=np.tile(np.asarray(reg_idx, np.int32), num_frames))


def patches_only(num_frames: int, patches_per_frame: int) -> Layout:
  return interleaved(num_frames, patches_per_frame, 0, registers_first=False)


ENCODER_ATTENTION = ('time_causal', 'full')


def encoder_mask(q: Layout, k: Layout, attention: str = 'time_causal'
                 ) -> np.ndarray:
  """bool [Lq, Lk]. Within a frame patches see patches and register i sees
  the patches and registers <= i; every token sees every earlier frame whole
  ('time_causal', the paper's 2D tokens) or every other frame whole ('full':
  the flat-1D ablation of Table 2, LARP-style full self-attention across
  frames; the same within-frame pattern, so the time-causal mask is its
  subset)."""
  if attention not in ENCODER_ATTENTION:
    raise ValueError(f'unknown encoder attention {attention!r}; choose from '
                     f'{ENCODER_ATTENTION}')
  fq, fk = q.frame[:, None], k.frame[None, :]
  q_reg, k_reg = q.is_register[:, None], k.is_register[None, :]
  within = np.where(
      q_reg,
      ~k_reg | (k.register[None, :] <= q.register[:, None]),
      ~k_reg)
  other = (fk != fq) if attention == 'full' else (fk < fq)
  return other | ((fq == fk) & within)


def time_causal_mask(q: Layout, k: Layout) -> np.ndarray:
  """Each token sees every token of its own and earlier latent frames."""
  return k.frame[None, :] <= q.frame[:, None]


def full_mask(q: Layout, k: Layout) -> np.ndarray:
  return np.ones((len(q), len(k)), dtype=bool)


DECODER_MASKS = {'time_causal': time_causal_mask, 'full': full_mask}


def decoder_mask(kind: str):
  if kind not in DECODER_MASKS:
    raise ValueError(f'unknown decoder attention {kind!r}; '
                     f'choose from {sorted(DECODER_MASKS)}')
  return DECODER_MASKS[kind]
