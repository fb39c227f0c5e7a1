"""Evaluate a quantized checkpoint: ``python evaluate.py checkpoint=<run dir>/quantized.pt data=...``."""
from vitquant.cli.evaluate import run

if __name__ == "__main__":
    run()
