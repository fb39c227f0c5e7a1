"""Data: evaluation transforms, datasets (image folders, torchvision CIFAR-10, the embedded digits
demo set) and seeded calibration sampling."""
