"""Offline multi-crop KD labels (FKD): ``python soft_labels.py model=... data=... soft_labels.dir=<out>``,
then ``python train.py ... soft_labels.dir=<out>`` replays them instead of running a teacher."""
from vitquant.cli.soft_labels import run

if __name__ == "__main__":
    run()
