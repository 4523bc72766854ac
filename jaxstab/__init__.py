"""jaxstab: study and fix the instability of fine-tuning pretrained transformers in JAX."""

__version__ = "0.1.0"
