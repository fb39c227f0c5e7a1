"""Run outputs: atomic files, the quantized checkpoint, metric logging (local and W&B)."""
