"""`python -m core ...`: see core/cli.py.

TensorFlow's start-up lines are silenced (environment) and filtered out of fd 2 (core/console.py)
before anything imports TensorFlow; `--help` and usage errors never import it.
"""

import sys

from core import console

console.quiet_tensorflow()
if len(sys.argv) > 1 and not {"-h", "--help"} & set(sys.argv[1:]):
    console.filter_stderr()

from core.cli import main  # noqa: E402 - after the filter is in place

sys.exit(main())
