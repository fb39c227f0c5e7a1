"""Integer export: ``python export.py checkpoint=<run dir>/quantized.pt format=onnx``."""
from vitquant.cli.export import run

if __name__ == "__main__":
    run()
