"""edgepipe: turn a Hugging Face model into a verified, runnable bundle for one edge device."""

__version__ = "0.1.0"
