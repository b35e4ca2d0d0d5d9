"""Where the bundled benchmark's source data lives, and which versions and licences it carries.

The benchmark is built only from data that other people wrote and that ships inside registry
packages: three Debian packages (the Noto Color Emoji font, the Unicode CLDR annotations, the
WordNet 3.0 database) and the PyPI package ``emoji``. This module finds their files, reads their
versions (the build is reused only while the versions stay the same) and their licences (for the
datasheet), and raises :class:`MissingDependencyError` with the install command when one is absent.

Non-Debian systems can point at the files with the environment variables ``MMEMBED_EMOJI_FONT``,
``MMEMBED_CLDR_DIR`` (the CLDR ``common`` directory) and ``MMEMBED_WORDNET_DIR``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.errors import MissingDependencyError

log = logging.getLogger(__name__)

APT_INSTALL = "apt-get install fonts-noto-color-emoji unicode-cldr-core wordnet-base"
PIP_INSTALL = "pip install emoji"

FONT_PACKAGE = "fonts-noto-color-emoji"
CLDR_PACKAGE = "unicode-cldr-core"
WORDNET_PACKAGE = "wordnet-base"
EMOJI_PYPI = "emoji"

#: Default locations on Debian/Ubuntu; ``dpkg -L`` is asked when these are absent.
DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEFAULT_CLDR = Path("/usr/share/unicode/cldr/common")
DEFAULT_WORDNET = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv",
                 "index.noun", "index.verb", "index.adj", "index.adv")


@dataclass(frozen=True)
class SourcePackage:
    """One registry package the benchmark is built from."""

    name: str
    registry: str  # "debian" or "pypi"
    version: str
    licence: str
    url: str


@dataclass(frozen=True)
class Sources:
    """The located source files and the packages they come from."""

    font: Path
    cldr: Path
    wordnet: Path
    packages: tuple[SourcePackage, ...] = field(default=())

    def versions(self) -> dict[str, str]:
        """``{package: version}``: what decides whether an existing build can be reused."""
        return {p.name: p.version for p in self.packages}


def _missing(package: str, what: str, install: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"the bundled benchmark needs {what} from the package {package!r}, which was not found; "
        f"install it with: {install}")


def _dpkg_files(package: str) -> list[Path]:
    """The files a Debian package installed (empty when dpkg is absent or the package is not)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line) for line in out.stdout.splitlines() if line.startswith("/")] if out.returncode == 0 else []


def find_font() -> Path:
    """NotoColorEmoji.ttf, from the environment, the Debian default path, or ``dpkg -L``."""
    env = os.environ.get("MMEMBED_EMOJI_FONT")
    for path in ([Path(env)] if env else []) + [DEFAULT_FONT]:
        if path.is_file():
            return path
    for path in _dpkg_files(FONT_PACKAGE):
        if path.name == "NotoColorEmoji.ttf" and path.is_file():
            return path
    raise _missing(FONT_PACKAGE, "the emoji font NotoColorEmoji.ttf", APT_INSTALL)


def find_cldr() -> Path:
    """The CLDR ``common`` directory holding ``annotations/`` and ``annotationsDerived/``."""
    env = os.environ.get("MMEMBED_CLDR_DIR")
    candidates = ([Path(env)] if env else []) + [DEFAULT_CLDR]
    candidates += [p.parent.parent for p in _dpkg_files(CLDR_PACKAGE) if p.match("common/annotations/en.xml")]
    for root in candidates:
        if (root / "annotations" / "en.xml").is_file() and (root / "annotationsDerived" / "en.xml").is_file():
            return root
    raise _missing(CLDR_PACKAGE, "the CLDR emoji annotations (common/annotations/*.xml)", APT_INSTALL)


def find_wordnet() -> Path:
    """The WordNet 3.0 database directory (``data.noun``, ``index.noun``, ...)."""
    env = os.environ.get("MMEMBED_WORDNET_DIR")
    candidates = ([Path(env)] if env else []) + [DEFAULT_WORDNET]
    candidates += [p.parent for p in _dpkg_files(WORDNET_PACKAGE) if p.name == "data.noun"]
    for root in candidates:
        if all((root / name).is_file() for name in WORDNET_FILES):
            return root
    raise _missing(WORDNET_PACKAGE, "the WordNet 3.0 database files (data.noun, index.noun, ...)", APT_INSTALL)


def emoji_module():
    """The ``emoji`` package, imported lazily so that the rest of mmembed works without it."""
    try:
        import emoji
    except ImportError:
        raise _missing(EMOJI_PYPI, "the emoji list (emoji.EMOJI_DATA)", PIP_INSTALL) from None
    return emoji


def locate_sources() -> Sources:
    """Find every source file and read package versions and licences; raise when one is missing."""
    font, cldr, wordnet = find_font(), find_cldr(), find_wordnet()
    emoji_module()
    packages = (
        SourcePackage(FONT_PACKAGE, "debian", debian_version(FONT_PACKAGE), debian_licence(FONT_PACKAGE),
                      "https://packages.debian.org/fonts-noto-color-emoji"),
        SourcePackage(CLDR_PACKAGE, "debian", debian_version(CLDR_PACKAGE), debian_licence(CLDR_PACKAGE),
                      "https://packages.debian.org/unicode-cldr-core"),
        SourcePackage(WORDNET_PACKAGE, "debian", debian_version(WORDNET_PACKAGE), debian_licence(WORDNET_PACKAGE),
                      "https://packages.debian.org/wordnet-base"),
        SourcePackage(EMOJI_PYPI, "pypi", pypi_version(EMOJI_PYPI), pypi_licence(EMOJI_PYPI),
                      "https://pypi.org/project/emoji/"),
    )
    log.info("bundled benchmark sources: %s", ", ".join(f"{p.name} {p.version}" for p in packages))
    return Sources(font=font, cldr=cldr, wordnet=wordnet, packages=packages)


def debian_version(package: str) -> str:
    """The installed version (``dpkg-query``), or ``"unknown"`` where dpkg is not available."""
    if shutil.which("dpkg-query") is None:
        return "unknown"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                             check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def debian_licence(package: str) -> str:
    """The licences named in the package's machine-readable copyright file (DEP-5), deduplicated."""
    path = Path("/usr/share/doc") / package / "copyright"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "see the package's copyright file"
    names: list[str] = []
    for match in re.finditer(r"^License:\s*(\S.*)$", text, flags=re.MULTILINE):
        name = match.group(1).strip()
        if name not in names:
            names.append(name)
    return ", ".join(names) if names else "see the package's copyright file"


def pypi_version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pypi_licence(distribution: str) -> str:
    """The licence from the distribution's metadata (expression, field or trove classifier)."""
    import importlib.metadata

    try:
        meta = importlib.metadata.metadata(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    for key in ("License-Expression", "License"):
        value = meta.get(key)
        if value and value.strip() and value.strip().upper() != "UNKNOWN" and len(value) < 100:
            return value.strip()
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return ", ".join(classifiers) or "unknown"
