"""Evaluation (FID, SWD, paired and correspondence metrics) and generation CLIs."""
