"""Quantization-aware training: ``python train.py qat=vvtq model=deit_tiny data=imagenet bits=2``
(``torchrun --nproc_per_node=8 train.py ...`` for DDP). Rerun the same command to resume."""
from vitquant.cli.train import run

if __name__ == "__main__":
    run()
