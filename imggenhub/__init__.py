"""imggenhub: batch image generation with diffusers on Kaggle's GPUs, or your own."""

__version__ = "0.1.0"
