"""Per-row outcomes of a benchmark that runs several rows (attention kernels,
remat policies, stages) and keeps going past a row that fails, so that one
broken kernel does not hide the others' numbers. After the last row the
script prints one summary line and exits non-zero if any requested row
failed, or none ran (benchmarks/device_check.sh relies on the exit status).

A row ends in one of three ways:
  ran      its numbers were printed;
  failed   it raised: out of memory, a kernel failing to compile or run
           (XLA's RuntimeError), or any other error; also a row that is
           unavailable (below) unless skipping was asked for;
  skipped  unavailable -- the model cannot build the requested kernel or
           express a mask with it (ValueError / NotImplementedError, e.g.
           attention_impl='cudnn' with a block mask, or an unknown name) --
           and the script was run with --skip_unavailable. Skipped rows are
           listed in the summary; they do not fail the run, but a run in
           which no row ran at all does.

Without --skip_unavailable an unavailable kernel is a failure: a row that
was asked for and not measured is never counted as a success.

  outcomes = Outcomes(skip_unavailable=...)
  with outcomes.row('d4-d4 stage 1 xla remat=dots'):
    ...                     # an exception here is recorded, not raised
  sys.exit(outcomes.finish())
"""
import contextlib

# What a model raises for a kernel or mask it cannot build (yet):
# vftok/models/attention_kernels.check_supported.
UNAVAILABLE = (ValueError, NotImplementedError)


class Outcomes:
  """Records rows as ran / skipped / failed and prints the summary."""

  def __init__(self, skip_unavailable: bool = False):
    self.skip_unavailable = skip_unavailable
    self.ran, self.skipped, self.failed = [], [], []

  def record(self, names, error: BaseException):
    """Marks the rows `names` (a str or a list) as not run because of
    `error`; prints '<name>: skipped: ...' or '<name>: failed: ...'."""
    names = [names] if isinstance(names, str) else list(names)
    unavailable = isinstance(error, UNAVAILABLE)
    msg = f'{type(error).__name__}: {str(error)[:500]}'
    if unavailable and self.skip_unavailable:
      self.skipped += names
      verdict = 'skipped: unavailable'
    else:
      self.failed += names
      verdict = 'failed: unavailable' if unavailable else 'failed'
    for name in names:
      print(f'{name}: {verdict}: {msg}', flush=True)

  @contextlib.contextmanager
  def row(self, name: str):
    """Runs the block as row `name`: it ran if the block returns; an
    Exception is recorded (skipped or failed) and not raised."""
    try:
      yield
    except Exception as e:   # every failure is reported, then the next row
      self.record(name, e)
    else:
      self.ran.append(name)

  def finish(self) -> int:
    """Prints the summary line(s); -> the exit status (0: every row ran or
    was skipped on request, and at least one ran)."""
    total = len(self.ran) + len(self.skipped) + len(self.failed)
    if self.skipped:
      print(f'{len(self.skipped)} of {total} rows skipped (unavailable, '
            f'--skip_unavailable): {", ".join(self.skipped)}', flush=True)
    if self.failed:
      print(f'{len(self.failed)} of {total} rows failed: '
            f'{", ".join(self.failed)}', flush=True)
      return 1
    if not self.ran:
      print(f'0 of {total} rows ran', flush=True)
      return 1
    print(f'{len(self.ran)} of {total} rows ran', flush=True)
    return 0
