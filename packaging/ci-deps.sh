#!/usr/bin/env bash
# Install, as root, the Debian packages that packaging/build-deb.sh, lintian, the real systemd
# test and the foreign-architecture test (tests/systemd/) need. Idempotent and quiet: installs
# only what is missing. (The foreign-architecture test mounts binfmt_misc and enables the
# qemu interpreter itself when they are not.)
set -euo pipefail

packages=(
    debootstrap            # the cached minimal Debian tree
    debian-archive-keyring # debootstrap verifies the mirror with it
    systemd-container      # systemd-nspawn
    systemd                # systemd-analyze verify / security
    util-linux             # nsenter, setpriv
    dpkg                   # dpkg-deb
    mmdebstrap             # the foreign-architecture trees; armhf builds compile cffi in one
    arch-test              # mmdebstrap checks that a foreign architecture can run
    qemu-user-static       # runs arm64/armhf binaries (binfmt_misc, fixed interpreter)
    binfmt-support         # update-binfmts registers qemu-user-static's interpreters
    lintian                # packaging/matrix.py reports its errors, warnings and overrides
)

if [[ $EUID -ne 0 ]]; then
    echo "ci-deps.sh: run as root" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$package")
done

if [[ ${#missing[@]} -gt 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
