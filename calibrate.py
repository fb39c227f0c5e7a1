"""Post-training quantization: ``python calibrate.py method=isvit model=deit_small bits=4``."""
from vitquant.cli.calibrate import run

if __name__ == "__main__":
    run()
