#!/usr/bin/env bash
# Build (or reuse from ~/.cache/ollama-fleet, or $OLLAMA_FLEET_CACHE) tools/ollama-oracle: a small Go program
# that prints what Ollama's own code (github.com/ollama/ollama at the tag in its go.mod, from the Go module
# proxy) computes from a GGUF header. The capacity tests compare fleet.capacity against it. Pure Go, no cgo.
# The cache key is a hash of the program's sources, so an edit rebuilds. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/../tools/ollama-oracle"

key=$(cat go.mod go.sum main.go | sha256sum | cut -c1-16)
dir=${OLLAMA_FLEET_CACHE:-$HOME/.cache/ollama-fleet}/ollama-oracle-$key
target="$dir/ollama-oracle"
if [ ! -x "$target" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "build-oracle: the Go toolchain (go) is needed to build tools/ollama-oracle" >&2
    exit 1
  fi
  mkdir -p "$dir"
  # Build beside the target, then move, so a concurrent reader never sees half a binary.
  CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local go build -o "$target.tmp.$$" .
  mv "$target.tmp.$$" "$target"
fi
echo "$target"
