#!/usr/bin/env bash
# Build HOTPANTS (Becker's implementation of the Alard & Lupton / Alard 2000
# method) as a peer for benchmarks/bright_stars.py.
#
# The HOTPANTS source comes from the public repository
# https://github.com/acbecker/hotpants (GPL); it is NEVER vendored in
# astro_dia: neither its code nor its binaries are committed here.  Clone or
# download it yourself, then point this script at the source tree.
#
# Usage:
#     benchmarks/build_hotpants.sh [HOTPANTS_SRC] [BINDIR]
#
#     HOTPANTS_SRC  the HOTPANTS source tree (with its Makefile); default
#                   $HOTPANTS_SRC
#     BINDIR        where to put the hotpants binary; default $HOTPANTS_BIN_DIR,
#                   else ./hotpants-bin
#
# Needs a C compiler and cfitsio (Debian/Ubuntu: apt-get install
# libcfitsio-dev).  CFITSIO_INC and CFITSIO_LIB override where its header and
# library are looked for (default: pkg-config, else /usr/include and the
# system library path).  The build happens in a temporary copy of the source,
# so the source tree is left untouched.
#
# Then:  export HOTPANTS=$BINDIR/hotpants ; python benchmarks/bright_stars.py
set -euo pipefail

src=${1:-${HOTPANTS_SRC:-}}
bindir=${2:-${HOTPANTS_BIN_DIR:-./hotpants-bin}}
if [[ -z "$src" || ! -f "$src/Makefile" || ! -f "$src/main.c" ]]; then
    echo "usage: $0 HOTPANTS_SRC [BINDIR]  (or set \$HOTPANTS_SRC); HOTPANTS_SRC must be" \
         "a source tree of https://github.com/acbecker/hotpants" >&2
    exit 2
fi

if [[ -z "${CFITSIO_INC:-}" ]]; then
    CFITSIO_INC=$(pkg-config --variable=includedir cfitsio 2>/dev/null || echo /usr/include)
fi
if [[ -z "${CFITSIO_LIB:-}" ]]; then
    CFITSIO_LIB=$(pkg-config --variable=libdir cfitsio 2>/dev/null || echo /usr/lib)
fi
if [[ ! -f "$CFITSIO_INC/fitsio.h" ]]; then
    echo "fitsio.h not found in $CFITSIO_INC; install cfitsio (libcfitsio-dev) or set" \
         "CFITSIO_INC" >&2
    exit 1
fi

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -R "$src"/. "$build"/
# HOTPANTS defines its globals in a header included by several files; GCC >= 10
# defaults to -fno-common, which makes that a link error, hence -fcommon.
copts="-funroll-loops -O3 -std=c99 -Wall -fcommon -I$CFITSIO_INC -D_GNU_SOURCE"
make -C "$build" hotpants CFITSIOINCDIR="$CFITSIO_INC" LIBDIR="$CFITSIO_LIB" \
    COPTS="$copts" >&2
mkdir -p "$bindir"
cp "$build/hotpants" "$bindir/hotpants"
echo "$(cd "$bindir" && pwd)/hotpants"
