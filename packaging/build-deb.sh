#!/usr/bin/env bash
# Build dist/edgeagent_<version>-<revision>[+debNN]_<arch>.deb from this checkout.
#
#   packaging/build-deb.sh [--arch amd64|arm64|armhf] [--dist bookworm|trixie] [--revision N] [--out DIR]
#
# The package ships wheels of edgeagent and of every dependency for the target: the
# CPython and glibc of that Debian release (3.11 and 2.36 on bookworm, 3.13 and 2.41 on
# trixie) on that architecture, pinned to the versions of the build environment when there
# is one. Its postinst builds /opt/edgeagent/venv from them offline. Defaults: the build
# machine's architecture, bookworm. Needs python3 with pip (the repo's .venv is used when
# present), dpkg-deb, PyPI (or a pip cache), and for armhf mmdebstrap and qemu-user-static:
# see "Wheels PyPI lacks" below.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
revision=1
out="$repo/dist"
arch="$(dpkg --print-architecture)"
dist=bookworm

while [[ $# -gt 0 ]]; do
    case "$1" in
    --arch | --dist | --revision | --out)
        if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then
            echo "build-deb.sh: $1 needs a value" >&2
            exit 2
        fi ;;&
    --arch) arch="$2"; shift 2 ;;
    --dist) dist="$2"; shift 2 ;;
    --revision) revision="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# The target: the Debian release's Python and glibc, and where it wants systemd units.
case "$dist" in
bookworm) # Debian 12: the base; its packages carry no release suffix.
    release=12 target_python=3.11 target_abi=cp311 target_glibc_minor=36 suffix=""
    python_depends="python3 (>= 3.11), python3 (<< 3.12)" unit_dir=lib/systemd/system ;;
trixie) # Debian 13: "+deb13" sorts after the bookworm build, so a release upgrade upgrades it.
    release=13 target_python=3.13 target_abi=cp313 target_glibc_minor=41 suffix="+deb13"
    python_depends="python3 (>= 3.13), python3 (<< 3.14)" unit_dir=usr/lib/systemd/system ;;
*) echo "build-deb.sh: --dist must be bookworm or trixie, not $dist" >&2; exit 2 ;;
esac
case "$arch" in
amd64) machine=x86_64 ;;
arm64) machine=aarch64 ;;
armhf) machine=armv7l ;;
*) echo "build-deb.sh: --arch must be amd64, arm64 or armhf, not $arch" >&2; exit 2 ;;
esac

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

version="$("$python" -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$repo/pyproject.toml")"
deb_version="$version-$revision$suffix"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"

# The changelog is written by people: it must have an entry for this upstream version.
changelog_version="$(sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p' "$here/debian/changelog")"
if [[ "${changelog_version%-*}" != "$version" ]]; then
    echo "build-deb.sh: packaging/debian/changelog starts at $changelog_version; add an entry for $version" >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
wheels="$stage/opt/edgeagent/wheels"
doc="$stage/usr/share/doc/edgeagent"
mkdir -p "$wheels" "$doc"

pip=("$python" -m pip --disable-pip-version-check --quiet)

# 1. The project's own wheel (use the build env's hatchling when it has one).
isolation=()
if "$python" -c 'import hatchling' 2>/dev/null; then isolation=(--no-build-isolation); fi
"${pip[@]}" wheel --no-deps "${isolation[@]}" --wheel-dir "$work/app" "$repo"
app_wheel=("$work"/app/edgeagent-"$version"-*.whl)
cp "${app_wheel[@]}" "$wheels/"

# 2. Binary wheels of every dependency, for the target interpreter. When the build Python
# is the project's environment, pinned to its versions: the package holds what the tests
# ran against. Otherwise the newest versions pyproject.toml allows.
constraints="$work/constraints.txt"
: >"$constraints"
if "$python" -m pip show --quiet edgeagent >/dev/null 2>&1; then
    "$python" -m pip freeze --exclude-editable | grep -v -i -e '^edgeagent' -e '^#' -e '^-e ' >"$constraints" || true
fi
# pip does not widen --platform by itself: list every manylinux tag the target's glibc runs,
# and linux_<machine> for the wheels built below.
platforms=(--platform "linux_$machine")
for ((minor = target_glibc_minor; minor >= 17; minor--)); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
platforms+=(--platform "manylinux2014_$machine")
if [[ "$machine" == x86_64 ]]; then
    for ((minor = 16; minor >= 5; minor--)); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
    platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
fi
target=(--only-binary=:all: --python-version "$target_python" --implementation cp --abi "$target_abi" "${platforms[@]}")

has_binary_wheel() { # NAME: does PyPI (or the cache) have a wheel of it for the target?
    "${pip[@]}" download --no-deps --dest "$work/probe" --constraint "$constraints" "${target[@]}" "$1" >/dev/null 2>&1
}

# 3. Wheels PyPI lacks for the target (armhf), each made the honest way and said so here.
#  - dbus-fast (bleak's D-Bus client) has no armv7l wheel. Its C extensions are optional
#    speed-ups: built from its sdist with its documented SKIP_CYTHON=1 it is pure Python,
#    so the wheel is tagged py3-none-any (after checking it holds no compiled file).
#  - cffi (cryptography's runtime) has no armv7l wheel of any version and no pure form.
#    It is compiled from its sdist inside an emulated Debian of the target release
#    (mmdebstrap + qemu-user), against that release's libffi (a dependency, found below).
#    The wheel is cached in $build_cache, keyed by release, architecture and version.
build_cache="${EDGEAGENT_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeagent-build}"
mkdir -p "$work/local"

pure_wheel() { # NAME ENV=VALUE
    local name="$1" switch="$2" built
    mkdir -p "$work/pure"
    env "$switch" "${pip[@]}" wheel --no-deps --no-binary "$name" --constraint "$constraints" \
        --wheel-dir "$work/pure" "$name"
    built=("$work"/pure/"${name//-/_}"-*.whl)
    local compiled='import re, sys, zipfile
sys.exit(not any(re.search(r"\.(so|pyd|c)$", n) for n in zipfile.ZipFile(sys.argv[1]).namelist()))'
    if "$python" -c "$compiled" "${built[0]}"; then
        echo "build-deb.sh: $name built with $switch still holds compiled code" >&2
        exit 1
    fi
    "${pip[@]}" download --no-deps --dest "$work/tools" --only-binary=:all: wheel
    PYTHONPATH="$(echo "$work"/tools/wheel-*.whl)" "$python" -m wheel tags --remove \
        --python-tag py3 --abi-tag none --platform-tag any "${built[0]}" >/dev/null
    mv "$work"/pure/"${name//-/_}"-*-py3-none-any.whl "$work/local/"
    echo "build-deb.sh: $name: no $machine wheel on PyPI; built pure-Python from its sdist ($switch)" >&2
}

native_wheel() { # NAME BUILD_DEPENDS
    local name="$1" build_depends="$2" sdist cached
    mkdir -p "$work/sdist/$name"
    "${pip[@]}" download --no-deps --no-binary=:all: --constraint "$constraints" --dest "$work/sdist/$name" "$name"
    sdist="$(cd "$work/sdist/$name" && ls)"
    # Its build requirements (pure Python) come from PyPI here: the emulated build stays offline.
    mkdir -p "$work/sdist/$name-deps"
    "$python" -c 'import sys, tarfile, tomllib
with tarfile.open(sys.argv[1]) as t:
    member = next(m for m in t.getmembers() if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml"))
    print("\n".join(tomllib.load(t.extractfile(member))["build-system"]["requires"]))' \
        "$work/sdist/$name/$sdist" >"$work/sdist/$name-deps.txt"
    "${pip[@]}" download --only-binary=:all: --dest "$work/sdist/$name-deps" -r "$work/sdist/$name-deps.txt"
    cached="$build_cache/$dist-$arch/${sdist%.tar.gz}"
    if ! ls "$cached"/*.whl >/dev/null 2>&1; then
        for tool in mmdebstrap arch-test; do
            command -v "$tool" >/dev/null || { echo "build-deb.sh: $name for $arch needs $tool (packaging/ci-deps.sh)" >&2; exit 1; }
        done
        echo "build-deb.sh: compiling $sdist in an emulated $dist/$arch (minutes)" >&2
        mkdir -p "$cached.partial"
        # shellcheck disable=SC2016 # $1 is mmdebstrap's root, expanded by the hook's shell
        mmdebstrap --quiet --variant=apt --arch="$arch" --aptopt='APT::Install-Recommends "false"' \
            --include="build-essential,python3-dev,python3-pip,$build_depends" \
            --customize-hook="mkdir -p \"\$1/build/out\"" \
            --customize-hook="copy-in $work/sdist/$name/$sdist $work/sdist/$name-deps /build" \
            --customize-hook='chroot "$1" env -i PATH=/usr/bin:/bin HOME=/build SOURCE_DATE_EPOCH='"$SOURCE_DATE_EPOCH"' python3 -m pip wheel --quiet --no-deps --no-index --find-links /build/'"$name-deps"' --wheel-dir /build/out /build/'"$sdist" \
            --customize-hook="sync-out /build/out $cached.partial" \
            "$dist" /dev/null "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
        rm -rf "$cached" && mv "$cached.partial" "$cached"
    fi
    cp "$cached"/*.whl "$work/local/"
    echo "build-deb.sh: $name: no $machine wheel on PyPI; compiled from its sdist in an emulated $dist/$arch" >&2
}

if ! has_binary_wheel dbus-fast; then pure_wheel dbus-fast SKIP_CYTHON=1; fi
if ! has_binary_wheel cffi; then native_wheel cffi libffi-dev,pkg-config; fi

"${pip[@]}" download --dest "$wheels" --constraint "$constraints" --find-links "$work/local" "${target[@]}" \
    "${app_wheel[@]}"

# 4. The file tree: unit, sysusers, config, the manual page from the CLI's own parser,
# the changelog, a DEP-5 copyright listing every wheel's licence, the lintian overrides.
install -D -m 0644 "$here/edgeagent.service" "$stage/$unit_dir/edgeagent.service"
install -D -m 0644 "$here/sysusers.d/edgeagent.conf" "$stage/usr/lib/sysusers.d/edgeagent.conf"
install -D -m 0644 "$here/edgeagent.toml" "$stage/etc/edgeagent/edgeagent.toml"
install -m 0644 "$here/README.md" "$doc/README.md"
mkdir -p "$stage/usr/bin" "$stage/usr/share/man/man1" "$stage/usr/share/lintian/overrides"
ln -s /opt/edgeagent/venv/bin/edgeagent "$stage/usr/bin/edgeagent"
PYTHONPATH="${app_wheel[0]}" "$python" -S "$here/manpage.py" | gzip -9n >"$stage/usr/share/man/man1/edgeagent.1.gz"
maintainer="$(sed -n 's/^Maintainer: //p' "$here/debian/control.in")"
"$python" "$here/copyright.py" "$wheels" --app edgeagent --contact "$maintainer" \
    --source "$(sed -n 's/^Homepage: //p' "$here/debian/control.in")" >"$doc/copyright"
{
    if [[ "$deb_version" != "$changelog_version" ]]; then
        echo "edgeagent ($deb_version) $dist; urgency=medium"
        echo
        echo "  * Built for Debian $release ($dist) on $arch, package revision $revision."
        echo
        echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
        echo
    fi
    cat "$here/debian/changelog"
} | gzip -9n >"$doc/changelog.Debian.gz"
overrides=(cat)
if [[ "$(zcat "$doc/changelog.Debian.gz" | grep -c '^edgeagent (')" -gt 1 ]]; then
    # Lintian names an initial upload only while the changelog has a single entry.
    overrides=(sed '/no ITP bug/,/initial-upload-closes-no-bugs/d')
fi
"${overrides[@]}" "$here/debian/lintian-overrides" >"$stage/usr/share/lintian/overrides/edgeagent"

mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
    sed "s/@APP_VERSION@/$version/g" "$here/debian/$script" >"$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
done
install -m 0644 "$here/debian/conffiles" "$stage/DEBIAN/conffiles"
chmod -R u+rwX,go+rX,go-w "$stage"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$stage/DEBIAN/md5sums"
installed_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
# The system libraries the wheels' compiled code links (libstdc++6 for frozenlist, libffi8
# for a cffi built here, glibc as new as the newest manylinux tag), read from the ELF files.
depends="$python_depends, $("$python" "$here/shlibs.py" "$wheels")"
sed -e "s/@DEB_VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
    -e "s/@PYTHON_DEPENDS@/$depends/" "$here/debian/control.in" >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"

# 5. The package. The wheels are zip files already: a light gzip is as good as xz here.
mkdir -p "$out"
deb="$out/edgeagent_${deb_version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$stage" "$deb" >/dev/null
echo "$deb"
