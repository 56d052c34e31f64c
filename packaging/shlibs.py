"""The Debian packages the compiled code inside the shipped wheels needs, as a Depends list.

    python3 packaging/shlibs.py WHEEL_DIR      # prints e.g. "libc6 (>= 2.34), libgcc-s1, libstdc++6"

A manylinux wheel bundles its libraries except those the manylinux policy takes from the
system (libc, libm, libgcc_s, libstdc++, ...); a wheel compiled here links the system's
libffi. Each ``.so`` in each wheel is read (its ELF ``DT_NEEDED`` entries; any architecture,
standard library only), libraries the wheel carries itself are dropped, and every other
soname is mapped to its Debian package. ``libc6`` gets the newest glibc a wheel's manylinux
tag asks for. An unknown soname stops the build: add it to ``PACKAGES``.
"""

from __future__ import annotations

import re
import struct
import sys
import zipfile
from pathlib import Path

# Sonames of the manylinux policy and of the wheels built here, by Debian package (12 and 13).
PACKAGES = {
    "libc6": ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1",
              "libresolv.so.2", "libnsl.so.1", "libcrypt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
              "ld-linux-armhf.so.3"],
    "libgcc-s1": ["libgcc_s.so.1"],
    "libstdc++6": ["libstdc++.so.6"],
    "libffi8": ["libffi.so.8"],
    "zlib1g": ["libz.so.1"],
}  # fmt: skip
SONAME_PACKAGE = {soname: package for package, sonames in PACKAGES.items() for soname in sonames}
SHT_DYNAMIC, DT_NEEDED = 6, 1


def needed(elf: bytes) -> list[str]:
    """The DT_NEEDED sonames of an ELF shared object, 32- or 64-bit, either byte order."""
    if elf[:4] != b"\x7fELF":
        return []
    wide, order = elf[4] == 2, "<" if elf[5] == 1 else ">"
    if wide:
        shoff, shentsize, shnum = struct.unpack_from(order + "Q10xHH", elf, 0x28)
        section, entry = order + "IIQQQQII", order + "qQ"
    else:
        shoff, shentsize, shnum = struct.unpack_from(order + "I10xHH", elf, 0x20)
        section, entry = order + "IIIIIIII", order + "iI"
    headers = [struct.unpack_from(section, elf, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _name, kind, _flags, _addr, offset, size, link, _info in headers:
        if kind != SHT_DYNAMIC:
            continue
        strtab = headers[link][4]
        step = struct.calcsize(entry)
        for at in range(offset, offset + size, step):
            tag, value = struct.unpack_from(entry, elf, at)
            if tag == DT_NEEDED:
                names.append(elf[strtab + value : elf.index(b"\0", strtab + value)].decode())
    return names


def glibc_wanted(wheel: str) -> tuple[int, int] | None:
    """The oldest glibc any of a wheel's manylinux tags accepts (a wheel runs on each one it lists)."""
    versions = [(2, int(m)) for m in re.findall(r"manylinux_2_(\d+)_", wheel)]
    versions += [(2, 17)] * ("manylinux2014_" in wheel) + [(2, 12)] * ("manylinux2010_" in wheel)
    versions += [(2, 5)] * ("manylinux1_" in wheel)
    return min(versions) if versions else None


def depends(wheel_dir: Path) -> str:
    packages: set[str] = set()
    glibc = (0, 0)
    for path in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
            carried = {Path(n).name for n in members}
            for name in members:
                if not re.search(r"\.so(\.\d+)*$", name):
                    continue
                for soname in needed(z.read(name)):
                    if soname in carried:
                        continue  # bundled by auditwheel, e.g. in cryptography.libs/
                    if soname not in SONAME_PACKAGE:
                        raise SystemExit(f"shlibs.py: {path.name}: {name} needs {soname}; add its package to PACKAGES")
                    packages.add(SONAME_PACKAGE[soname])
        if (wanted := glibc_wanted(path.name)) and wanted > glibc:
            glibc = wanted
    listed = [f"libc6 (>= {glibc[0]}.{glibc[1]})" if p == "libc6" and glibc > (0, 0) else p for p in sorted(packages)]
    return ", ".join(listed)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    print(depends(Path(sys.argv[1])))
