#!/usr/bin/env bash
# Writes the Kotlin, Swift and Python bindings of the SDK (crates/ferry-ffi) from the
# built library, with the workspace's own uniffi-bindgen (library mode), into:
#   sdk/kotlin/src/main/kotlin/chat/ferry/ferry.kt
#   sdk/swift/Sources/Ferry/Ferry.swift
#   sdk/swift/Sources/FerryFFI/include/FerryFFI.h and module.modulemap
#   sdk/python/ferry/ferry.py
# They are committed; crates/ferry-ffi/tests/bindings.rs generates them again and fails
# when they differ, so run this after changing the crate's exported API.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p ferry-ffi --lib --bin uniffi-bindgen
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
lib=""
for f in libferry_ffi.so libferry_ffi.dylib; do
  [ -f "$target/debug/$f" ] && lib="$target/debug/$f"
done
[ -n "$lib" ] || { echo "no libferry_ffi in $target/debug" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$target/debug/uniffi-bindgen" generate --no-format --library "$lib" \
  --language kotlin --language swift --language python --out-dir "$out"

install -D -m 644 "$out/chat/ferry/ferry.kt" sdk/kotlin/src/main/kotlin/chat/ferry/ferry.kt
install -D -m 644 "$out/Ferry.swift" sdk/swift/Sources/Ferry/Ferry.swift
install -D -m 644 "$out/FerryFFI.h" sdk/swift/Sources/FerryFFI/include/FerryFFI.h
install -D -m 644 "$out/FerryFFI.modulemap" sdk/swift/Sources/FerryFFI/include/module.modulemap
install -D -m 644 "$out/ferry.py" sdk/python/ferry/ferry.py
echo "bindings written from $lib"
