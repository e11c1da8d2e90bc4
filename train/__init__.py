"""Training of DynaST with Accelerate: `accelerate launch train/main.py`."""
