"""The user's mistakes, told apart from bugs (the bottom layer: imports
nothing from vftok, so every module can raise them).

`InputError`: the config or its inputs are wrong (a data pattern that matches
no files, a missing checkpoint or weights path, a workdir of the wrong kind),
said in one line that names the config field and says how to make or fix the
input. vftok/main.py prints it as `FATAL <message>` and exits non-zero, with
no traceback; every job checks its inputs before it writes anything into its
workdir. A bug (any other exception) keeps its traceback.
"""


class InputError(ValueError):
  """A user's mistake in the config or its inputs, in one line that says how
  to fix it (vftok/main.py prints it without a traceback)."""
