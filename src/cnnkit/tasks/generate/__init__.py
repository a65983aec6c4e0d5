"""The generate task: a class-conditional GAN's quality figures, sampling and run detection."""
