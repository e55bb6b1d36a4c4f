"""evals/timing.Timer: compilation apart from steady-state time."""
import time

from vftok.evals import timing


def test_first_call_of_a_compile_key_is_untimed_warm_up():
  calls = []

  def slow_first(x):
    calls.append(x)
    time.sleep(0.3 if len(calls) == 1 else 0.01)  # the first stands for a compile
    return x * 2

  t = timing.Timer()
  assert t('a', slow_first, 3, compile_key='fn') == 6
  assert calls == [3, 3]                        # warm-up, then the timed call
  assert t.compile_seconds >= 0.3 and t.seconds['a'] < 0.2
  assert t('b', slow_first, 4, compile_key='fn') == 8
  assert calls == [3, 3, 4]                     # same key: no second warm-up
  assert set(t.seconds) == {'a', 'b'} and t.compile_seconds < 0.5
