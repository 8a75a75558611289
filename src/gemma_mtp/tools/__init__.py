"""The GGUF tools of ``gemma-mtp``: convert, quantize, sanitize, inspect, diff and pair (one module
each) and their commands (`tools.cli`). Built on the file format in `gemma_mtp.gguf`."""
