#!/usr/bin/env bash
# Builds the SDK's library and puts it beside the Python bindings (sdk/python/ferry/),
# so `import ferry` works from sdk/python and `pip install sdk/python` packs it.
#   sdk/python/build.sh            # debug build
#   sdk/python/build.sh release    # the size-optimised profile (release-ffi)
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-debug}" in
  debug) cargo build -p ferry-ffi --lib; dir=target/debug ;;
  release) cargo build -p ferry-ffi --lib --profile release-ffi; dir=target/release-ffi ;;
  *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
esac
for lib in libferry_ffi.so libferry_ffi.dylib; do
  if [ -f "$dir/$lib" ]; then
    cp "$dir/$lib" sdk/python/ferry/
    echo "sdk/python/ferry/$lib (from $dir)"
    exit 0
  fi
done
echo "no libferry_ffi in $dir" >&2
exit 1
