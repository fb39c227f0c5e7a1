"""Calibration stages shared by the methods (range init, reparameterization, reconstruction, ...)."""
