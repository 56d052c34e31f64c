"""Write the package's DEP-5 ``copyright`` file from the wheels it ships.

    python3 packaging/copyright.py WHEEL_DIR --app NAME --contact "NAME <MAIL>" --source URL > copyright

Every bundled wheel gets a ``Files`` paragraph with the licence its own metadata declares:
the PEP 639 ``License-Expression`` when there is one; otherwise what its licence files are
(recognised by their wording), then its ``License`` field, then its classifier. Where the
older fields disagree with the wheel's own licence file, the file wins and a ``Comment``
says so. A licence nothing identifies stops the build: a person decides, in ``KNOWN``.
Each licence named gets one standalone paragraph: a pointer into /usr/share/common-licenses,
or the text as one of the wheels ships it. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
COMMON = {"Apache-2.0": "Apache License version 2.0", "MPL-2.0": "Mozilla Public License version 2.0"}
ALIASES = {
    "apache 2.0": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "mit": "MIT",
    "mit license": "MIT",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-2-clause": "BSD-2-Clause",
    "psf-2.0": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
}
# Decided by a person, with the reason: metadata that names no licence precisely and no file to read.
KNOWN = {
    "pyserial": ("BSD-3-Clause", "metadata says 'BSD' and the wheel has no licence file; pyserial's LICENSE.txt "
                 "upstream is the 3-clause text"),
}  # fmt: skip
NO_LICENCE = "NOASSERTION"
# Standard texts for licences a wheel names but ships no file of (prometheus-client's vendored decorator.py).
STANDARD = {
    "BSD-2-Clause": """Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.""",
}


def classify(text: str) -> str | None:
    """The SPDX id a licence text is, by its wording; None for notices, author lists and pointers."""
    flat = " ".join(text.split())
    if "Apache License" in flat and "Version 2.0" in flat and "TERMS AND CONDITIONS" in flat:
        return "Apache-2.0"
    if "Permission is hereby granted, free of charge" in flat:
        return "MIT" if "shall be included in all copies" in flat else "MIT-0"
    if "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in flat:
        return "PSF-2.0"
    if "Eclipse Public License - v 2.0" in flat:
        return "EPL-2.0"
    if "Redistribution and use in source and binary forms" in flat:
        return "BSD-3-Clause" if "endorse or promote" in flat else "BSD-2-Clause"
    return None


def _copyright_lines(text: str) -> list[str]:
    """Lines stating a copyright ("Copyright 2020 X", "(c) 2020 X"), not licence prose about copyright."""
    found = []
    for line in text.splitlines():
        line = " ".join(line.split())
        m = re.match(r"^(?:Copyright|COPYRIGHT|©)\s*(?:\([cC]\)|©)?\s*(.*)$|^\([cC]\)\s*(\d.*)$", line)
        rest = m and (m.group(1) if m.group(1) is not None else m.group(2))
        if not rest or re.match(r"^[a-z\[{<]|^(YEAR|YYYY)\b", rest):
            continue  # "copyright license to ...", "Copyright [yyyy] [name of copyright owner]"
        found.append(line)
    return found


@dataclass
class Wheel:
    """What one wheel says about itself: name, version, licence, copyright holders, licence texts."""

    file: str
    name: str
    version: str
    license: str
    comment: str
    holders: list[str]
    texts: dict[str, str] = field(default_factory=dict)


def read_wheel(path: Path, *, required: bool = True) -> Wheel:
    """``required=False`` for the project itself: no licence is then said plainly, not guessed."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode("utf-8", "replace"))
        dist_info = meta_name.split("/")[0]
        # The project's own licence files, not those of code it vendors (pip's _vendor, aiohttp's llhttp).
        own = [
            n
            for n in names
            if n.startswith(dist_info + "/")
            and not n.endswith("/")
            and (
                n.startswith(f"{dist_info}/licenses/")  # PEP 639: every file there
                or re.search(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$", n, re.IGNORECASE)
            )
            and "/vendor" not in n
            and "/src/" not in n
        ]
        files = {n: z.read(n).decode("utf-8", "replace") for n in own}
    name, version = meta["Name"], meta["Version"]
    texts: dict[str, str] = {}
    for text in files.values():
        kind = classify(text)
        if kind:
            texts.setdefault(kind, text)
    holders = sorted({line for text in files.values() for line in _copyright_lines(text)})
    if not holders:
        author, email_ = (meta.get("Author") or "").strip(), (meta.get("Author-email") or "").strip()
        if author and email_ and "<" not in email_:
            author = f"{author} <{email_}>"
        holders = [author or email_ or f"the {name} authors"]

    comment = f"{name} {version}."
    if expression := meta.get("License-Expression"):
        license_ = expression.strip()
        comment += " Licence: its License-Expression."
    else:
        field_ = ALIASES.get((meta.get("License") or "").strip().lower())
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        declared = field_ or next((ALIASES[c.lower()] for c in classifiers if c.lower() in ALIASES), None)
        said = meta.get("License") or (classifiers[0] if classifiers else "nothing")
        if name.lower() in KNOWN:
            license_, why = KNOWN[name.lower()]
            comment += f" Licence: {why}."
        elif field_:
            license_ = field_
            comment += " Licence: its License field."
        elif len(texts) == 1:  # a classifier says less than the file: "BSD License", "Public Domain"
            (license_,) = texts
            comment += " Licence: its licence file"
            comment += "." if declared == license_ else f" (its classifier says {said!r})."
        elif declared:
            license_ = declared
            comment += " Licence: its classifier."
        elif required:
            raise SystemExit(f"copyright.py: {path.name}: no licence recognised (metadata says {said!r}); add to KNOWN")
        else:
            license_ = ""
    return Wheel(path.name, name, version, license_, comment, holders, texts)


def dep5_license(expression: str) -> str:
    """SPDX ``A OR B`` / ``A AND B`` in DEP-5's spelling (``or`` / ``and``)."""
    return re.sub(r"\s+(OR|AND)\s+", lambda m: f" {m.group(1).lower()} ", expression.strip())


def atoms(expression: str) -> list[str]:
    return [a for a in re.split(r"\s+(?:or|and|OR|AND)\s+|[()]", expression) if a.strip()]


def block(text: str) -> str:
    """A multi-line field value: each line indented, empty lines as ' .'."""
    lines = [line.rstrip().expandtabs() for line in text.strip("\n").splitlines()]
    return "\n".join(f" {line}" if line.strip() else " ." for line in lines)


def generic_text(text: str) -> str:
    """A licence text without its project's copyright lines (the Files paragraphs name them)."""
    kept = [line for line in text.splitlines() if not _copyright_lines(line) and line.strip() != "All rights reserved."]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")


def render(app: Wheel, wheels: list[Wheel], extra: list[tuple[str, str, str, str]], contact: str, source: str) -> str:
    """The whole file; ``extra`` are (files, holders, licence, comment) of code vendored inside the app."""
    out = [
        f"Format: {FORMAT}",
        f"Upstream-Name: {app.name}",
        f"Upstream-Contact: {contact}",
        f"Source: {source}",
        "Comment: The Python packages edgeagent needs ship as wheels in /opt/edgeagent/wheels;",
        " each has a Files paragraph below with the licence its own metadata declares.",
        "",
    ]
    app_license = dep5_license(app.license) if app.license else NO_LICENCE
    out += ["Files: *", "Copyright: " + block("\n".join(app.holders)).lstrip(), f"License: {app_license}", ""]
    for files, holders, license_, comment in extra:
        out += [f"Files: {files}", f"Copyright: {holders}", f"License: {license_}", f"Comment: {comment}", ""]
    for w in wheels:
        pattern = f"opt/edgeagent/wheels/{w.file.split('-')[0]}-{w.version}-*.whl"
        out += [
            f"Files: {pattern}",
            "Copyright: " + block("\n".join(w.holders)).lstrip(),
            f"License: {dep5_license(w.license)}",
            "Comment: " + w.comment,
            "",
        ]
    needed = sorted({a for w in [app, *wheels] for a in atoms(w.license)} | {e[2] for e in extra})
    for atom in needed:
        if atom in COMMON:
            body = f"On Debian systems, the complete text of the {COMMON[atom]} can be found in\n"
            body += f"/usr/share/common-licenses/{atom}."
        else:
            source_wheel = next((w for w in [app, *wheels] if atom in w.texts), None)
            if source_wheel is not None:
                body = generic_text(source_wheel.texts[atom])
            elif atom in STANDARD:
                body = STANDARD[atom]
            else:
                raise SystemExit(f"copyright.py: no bundled text of the {atom} licence; add one to STANDARD")
        out += [f"License: {atom}", block(body), ""]
    if not app.license:
        note = f"{app.name} {app.version} declares no licence (pyproject.toml has no license field).\n"
        note += "Ask its maintainers before redistributing it."
        out += [f"License: {NO_LICENCE}", block(note), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir", type=Path)
    parser.add_argument("--app", required=True, help="the project's own distribution name")
    parser.add_argument("--contact", required=True, help="Upstream-Contact (the package's maintainer)")
    parser.add_argument("--source", required=True, help="Source: where the code comes from")
    args = parser.parse_args()
    paths = sorted(args.wheel_dir.glob("*.whl"), key=lambda p: p.name.lower())
    app = next(read_wheel(p, required=False) for p in paths if p.name.startswith(f"{args.app}-"))
    wheels = [read_wheel(p) for p in paths if p.name != app.file]
    extra = []
    with zipfile.ZipFile(args.wheel_dir / app.file) as z:
        for n in z.namelist():
            if n.endswith(".LICENSE.txt") and ".dist-info/" not in n:  # vendored code, e.g. uplot.LICENSE.txt
                text = z.read(n).decode()
                kind = classify(text)
                if kind is None:
                    raise SystemExit(f"copyright.py: {n}: licence not recognised")
                vendored = n.removesuffix(".LICENSE.txt")
                app.texts.setdefault(kind, text)
                holders = "; ".join(_copyright_lines(text)) or "its authors"
                comment = f"vendored in the {app.name} wheel as {vendored}.*"
                extra.append((f"*/{vendored.rsplit('/', 1)[-1]}.*", holders, kind, comment))
    sys.stdout.write(render(app, wheels, extra, args.contact, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
