#!/usr/bin/env bash
# Build llama.cpp's tools from the llama.cpp vendored in the llama-cpp-python sdist, for
# side-by-side checks (scripts/make_llama_cpp_fixtures.py, scripts/check_llama_cpp_interop.py).
# Never run by CI: it takes about 15 minutes on 2 cores.
#
#   scripts/build_llama_cpp.sh            # build (or find) and print the directory
#   JOBS=4 scripts/build_llama_cpp.sh
#
# Result, under ${GEMMA_MTP_CACHE:-~/.cache/gemma-mtp}/llama.cpp/<version>/:
#   bin/llama-server llama-cli llama-bench llama-speculative-simple llama-quantize llama-imatrix
#   convert_hf_to_gguf.py conversion/ gguf-py/   (the converter and its gguf package, unmodified)
#   COMMIT                                       (llama.cpp build number/commit from the tree)
# Idempotent: a finished build (marked by .done) is found and reused.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${GEMMA_MTP_CACHE:-$HOME/.cache/gemma-mtp}"
DEST="$CACHE/llama.cpp/$VERSION"
JOBS="${JOBS:-$(nproc)}"
TARGETS=(llama-server llama-cli llama-bench llama-speculative-simple llama-quantize llama-imatrix)
PYTHON="${PYTHON:-python3}"

if [[ -f "$DEST/.done" ]]; then
    echo "$DEST"
    exit 0
fi
mkdir -p "$DEST"
WORK="$DEST/work"
mkdir -p "$WORK"

sdist=$(ls "$WORK"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)
if [[ -z "$sdist" ]]; then
    echo "fetching llama-cpp-python==$VERSION sdist with pip" >&2
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$WORK"
    sdist=$(ls "$WORK"/llama_cpp_python-"$VERSION".tar.gz)
fi

SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [[ ! -d "$SRC" ]]; then
    tar -xzf "$sdist" -C "$WORK"
fi

if command -v ninja >/dev/null 2>&1; then
    GEN=(-G Ninja)
else
    GEN=()
fi
cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$WORK/build" -j"$JOBS" --target "${TARGETS[@]}" >&2

mkdir -p "$DEST/bin"
for target in "${TARGETS[@]}"; do
    cp "$WORK/build/bin/$target" "$DEST/bin/"
done
# Shared libraries (libllama, libggml*) when the build made them.
find "$WORK/build/bin" -maxdepth 1 -name '*.so*' -exec cp -P {} "$DEST/bin/" \;
rm -rf "$DEST/conversion" "$DEST/gguf-py"
cp "$SRC/convert_hf_to_gguf.py" "$DEST/"
if [[ -d "$SRC/conversion" ]]; then
    cp -r "$SRC/conversion" "$DEST/"
fi
cp -r "$SRC/gguf-py" "$DEST/"
"$DEST/bin/llama-cli" --version 2>&1 | grep -m1 -i 'version' > "$DEST/COMMIT" || true
touch "$DEST/.done"
echo "$DEST"
