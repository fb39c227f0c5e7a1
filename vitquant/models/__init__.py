"""Building timm models, loading checkpoints, and turning models into quant twins."""
