"""Tuned launch configurations: the table the launchers read (`table.py`, with the winners shipped
in `shipped.json`) and the autotuner that writes it (`autotune.py`, run as
`python -m kernels.autotune`). Each operator declares its kernels' runners in its `tuning.py`."""
