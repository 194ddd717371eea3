"""The code that ships inside a bundle.

Imports only onnxruntime, numpy, tokenizers and the standard library, and only relatively within
this package, so the same files run as ``edgepipe.runtime`` on the build host and as
``edgepipe_runtime`` inside a bundle.
"""

RUNTIME_PACKAGE = "edgepipe_runtime"
