import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or "1") > 1:
    # A torchrun worker leaves without running C++ static destructors: after its results were written and
    # its gloo process group destroyed, a rank aborted at exit in CI twice ("terminate called without an
    # active exception", SIGABRT, 2026-12-06), once even after the ranks' closing barrier (engine.train).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
