"""vitquant: quantization of Vision Transformers."""
