#!/usr/bin/env bash
# Build dist/edgeagent_<version>-<revision>_<arch>.deb from this checkout.
#
#   packaging/build-deb.sh [--revision N] [--out DIR]
#
# The package ships wheels of edgeagent and of every dependency (binary wheels only,
# for Debian 12's CPython 3.11 and glibc 2.36, pinned to the versions of the build
# environment when there is one); its postinst builds /opt/edgeagent/venv from them
# offline. Needs: python3 with pip (the repo's .venv is used when present), dpkg-deb,
# and PyPI (or a pip cache) to fetch the wheels.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
revision=1
out="$repo/dist"

# Target: Debian 12 (bookworm).
target_python=3.11
target_abi=cp311
target_glibc_minor=36

while [[ $# -gt 0 ]]; do
    case "$1" in
    --revision) revision="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
arch="$(dpkg --print-architecture)"
if [[ "$arch" != amd64 ]]; then
    echo "build-deb.sh: only amd64 is supported (the wheels are fetched for x86_64)" >&2
    exit 2
fi

version="$("$python" -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$repo/pyproject.toml")"
deb_version="$version-$revision"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
wheels="$stage/opt/edgeagent/wheels"
mkdir -p "$wheels"

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
# pip does not widen --platform by itself: list every manylinux tag glibc 2.36 runs.
platforms=()
for ((minor = target_glibc_minor; minor >= 5; minor--)); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
"${pip[@]}" download --dest "$wheels" --constraint "$constraints" \
    --only-binary=:all: --python-version "$target_python" --implementation cp --abi "$target_abi" \
    "${platforms[@]}" "${app_wheel[@]}"

# 3. The file tree.
install -D -m 0644 "$here/edgeagent.service" "$stage/lib/systemd/system/edgeagent.service"
install -D -m 0644 "$here/sysusers.d/edgeagent.conf" "$stage/usr/lib/sysusers.d/edgeagent.conf"
install -D -m 0644 "$here/edgeagent.toml" "$stage/etc/edgeagent/edgeagent.toml"
install -D -m 0644 "$here/README.md" "$stage/usr/share/doc/edgeagent/README.md"
mkdir -p "$stage/usr/bin"
ln -s /opt/edgeagent/venv/bin/edgeagent "$stage/usr/bin/edgeagent"

mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
    sed "s/@APP_VERSION@/$version/g" "$here/debian/$script" >"$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
done
install -m 0644 "$here/debian/conffiles" "$stage/DEBIAN/conffiles"
installed_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@DEB_VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
    "$here/debian/control.in" >"$stage/DEBIAN/control"
chmod -R u+rwX,go+rX,go-w "$stage"

# 4. The package. The wheels are zip files already: a light gzip is as good as xz here.
mkdir -p "$out"
deb="$out/edgeagent_${deb_version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$stage" "$deb" >/dev/null
echo "$deb"
