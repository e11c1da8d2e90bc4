"""The autotuner's command, `python -m kernels.autotune` (installed as `dynast-autotune`): the
autotuner itself is `kernels.tuning.autotune`, beside the tuning table it writes."""

import sys

from .tuning.autotune import main

if __name__ == "__main__":
    sys.exit(main())
