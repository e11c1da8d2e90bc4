"""`python -m eval`: the same entry point as `dynast-eval`."""

from eval.cli import main

raise SystemExit(main())
