"""cnnkit: from labelled images to a trained, understood, deployable CNN."""

__version__ = "0.1.0"
