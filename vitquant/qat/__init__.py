"""Quantization-aware training: loop, distillation losses, variation regularizer, resume state."""
