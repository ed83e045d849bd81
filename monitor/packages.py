"""Argos Translate packages on disk: discovery, checked installation, removal, the index.

An ``.argosmodel`` file is a zip of one directory holding ``metadata.json``, a CTranslate2
model in ``model/`` and a ``sentencepiece.model`` or ``bpe.model``. Metadata is read with
``argostranslate.package`` (which imports neither torch nor stanza); installing is done
here rather than by ``argostranslate.package.install_from_path``, which extracts whatever
zip it is given and then imports ``argostranslate.translate`` (and with it torch). Here a
package is checked whole, extracted beside its destination and moved into place in one
rename, so a corrupt or foreign file installs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from monitor import logs
from monitor.config import TranslationSettings
from monitor.errors import TranslateError
from monitor.languages import ARGOS_LANGUAGES, PIVOT, to_argos

log = logs.get("monitor.packages")
INDEX_TIMEOUT = 15.0


@dataclass(frozen=True)
class PackageInfo:
    """One installed translation package."""

    name: str  # argospm's name, e.g. translate-nb_en
    from_code: str
    to_code: str
    version: str
    path: Path
    target_prefix: str = ""


@dataclass(frozen=True)
class Route:
    """The packages that take a text from one language to another (two when pivoting)."""

    packages: tuple[PackageInfo, ...]

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.packages)

    @property
    def version(self) -> str:
        return "+".join(p.version for p in self.packages)


def _argos_settings() -> Any:
    try:
        from argostranslate import settings
    except OSError as exc:  # it creates its directories on import
        raise TranslateError(f"Argos Translate cannot set up its directories: {exc}") from exc
    return settings


def package_dirs(settings: TranslationSettings) -> list[Path]:
    """Where packages are looked for: ``packages_dir``, else Argos Translate's own."""
    if settings.packages_dir:
        return [Path(settings.packages_dir).expanduser()]
    return [Path(p) for p in _argos_settings().package_dirs]


def install_dir(settings: TranslationSettings) -> Path:
    return package_dirs(settings)[0]


# --- discovery -------------------------------------------------------------------------


def _info(path: Path) -> PackageInfo:
    from argostranslate.package import Package, argospm_package_name

    package = Package(path)
    return PackageInfo(name=argospm_package_name(package), from_code=package.from_code,
                       to_code=package.to_code, version=package.package_version or "0",
                       path=path, target_prefix=package.target_prefix or "")


def installed(dirs: Iterable[Path]) -> list[PackageInfo]:
    """Translation packages in ``dirs``; an unreadable one is logged and left out."""
    found = []
    for directory in dirs:
        entries = sorted(directory.iterdir()) if directory.is_dir() else []
        for path in entries:
            if path.name.startswith(".") or not (path / "metadata.json").is_file():
                continue
            try:
                info = _info(path)
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("package.unreadable", path=str(path), error=str(exc))
                continue
            if info.from_code and info.to_code:
                found.append(info)
    return found


def find_route(packages: Sequence[PackageInfo], source: str, target: str) -> Route | None:
    """A direct package, else two through English, else None (codes are Argos codes)."""
    by_pair = {(p.from_code, p.to_code): p for p in packages}
    if (direct := by_pair.get((source, target))) is not None:
        return Route((direct,))
    first, second = by_pair.get((source, PIVOT)), by_pair.get((PIVOT, target))
    return Route((first, second)) if first and second else None


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- installation ----------------------------------------------------------------------


def _open(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise TranslateError(f"{path}: no such file")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TranslateError(f"{path}: not an Argos package (not a zip archive)") from exc


def _root(archive: zipfile.ZipFile, label: str) -> str:
    """The archive's one top-level directory; members that would escape it are refused."""
    names = [PurePosixPath(n) for n in archive.namelist()]
    if any(n.is_absolute() or ".." in n.parts for n in names):
        raise TranslateError(f"{label}: refused: the archive has paths outside its directory")
    roots = {n.parts[0] for n in names if n.parts}
    if len(roots) != 1 or all(len(n.parts) == 1 for n in names):
        raise TranslateError(f"{label}: not an Argos package (expected one directory "
                             "with metadata.json, model/ and a tokenizer)")
    return roots.pop()


def _metadata(archive: zipfile.ZipFile, root: str, label: str) -> dict[str, Any]:
    try:
        meta = json.loads(archive.read(f"{root}/metadata.json"))
    except KeyError:
        raise TranslateError(f"{label}: not an Argos package (no metadata.json)") from None
    except (ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise TranslateError(f"{label}: corrupt package (metadata.json unreadable)") from exc
    if not isinstance(meta, dict):
        raise TranslateError(f"{label}: corrupt package (metadata.json is not an object)")
    if meta.get("type", "translate") != "translate":
        raise TranslateError(f"{label}: a {meta.get('type')!r} package, not a translation one")
    for key in ("from_code", "to_code"):
        code = meta.get(key)
        if not isinstance(code, str) or code not in ARGOS_LANGUAGES:
            raise TranslateError(f"{label}: {key} {code!r} is not a language monitor knows "
                                 f"(known: {', '.join(sorted(ARGOS_LANGUAGES))})")
    return meta


def _check_members(archive: zipfile.ZipFile, root: str, label: str) -> None:
    names = set(archive.namelist())
    if f"{root}/model/model.bin" not in names:
        raise TranslateError(f"{label}: not an Argos package (no CTranslate2 model/model.bin)")
    if not {f"{root}/sentencepiece.model", f"{root}/bpe.model"} & names:
        raise TranslateError(f"{label}: not an Argos package (no sentencepiece.model "
                             "or bpe.model)")
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise TranslateError(f"{label}: corrupt package ({exc})") from exc
    if bad is not None:
        raise TranslateError(f"{label}: corrupt package ({bad} fails its checksum)")


def _check_loads(package_dir: Path, label: str) -> None:
    """The tokenizer and the model open: a package that passes is one we can run."""
    import ctranslate2
    import sentencepiece

    try:
        if (package_dir / "sentencepiece.model").is_file():
            sentencepiece.SentencePieceProcessor(model_file=str(package_dir /
                                                                "sentencepiece.model"))
        ctranslate2.Translator(str(package_dir / "model"), device="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        raise TranslateError(f"{label}: corrupt package (model does not load: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc!r})") from exc


def install_from_path(path: Path, dest: Path) -> PackageInfo:
    """Check the package file whole, then install it into ``dest``, replacing any package
    for the same pair; on any error nothing is installed."""
    label = str(path)
    with _open(path) as archive:
        root = _root(archive, label)
        meta = _metadata(archive, root, label)
        _check_members(archive, root, label)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=dest))
        except OSError as exc:
            raise TranslateError(f"cannot install into {dest}: {exc}") from exc
        try:
            archive.extractall(staging)
            _check_loads(staging / root, label)
            return _place(staging / root, dest, meta)
        except (OSError, zipfile.BadZipFile, zlib.error) as exc:
            raise TranslateError(f"{label}: cannot install into {dest}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _place(package_dir: Path, dest: Path, meta: dict[str, Any]) -> PackageInfo:
    pair = (meta["from_code"], meta["to_code"])
    for old in installed([dest]):
        if (old.from_code, old.to_code) == pair:
            shutil.rmtree(old.path)
    final = dest / package_dir.name
    if final.exists():
        shutil.rmtree(final)
    os.replace(package_dir, final)
    info = _info(final)
    log.info("package.installed", package=info.name, version=info.version, path=str(final))
    return info


def remove(dirs: Iterable[Path], what: str) -> list[PackageInfo]:
    """Remove the packages that translate from language ``what`` (or are named ``what``)."""
    code = to_argos(what)
    chosen = [p for p in installed(dirs) if p.from_code == code or p.name == what]
    if not chosen:
        raise TranslateError(f"no installed package translates from {what!r}; "
                             "see `monitor models list`")
    for package in chosen:
        try:
            shutil.rmtree(package.path)
        except OSError as exc:
            raise TranslateError(f"cannot remove {package.path}: {exc}") from exc
        log.info("package.removed", package=package.name, path=str(package.path))
    return chosen


# --- the index (needs a network) -------------------------------------------------------


def index_url() -> str:
    base = os.environ.get("ARGOS_PACKAGE_INDEX") or _argos_settings().package_index
    return base.rstrip("/") + "/index.json"


def available() -> list[Any]:
    """Packages in the Argos index, as ``argostranslate.package.AvailablePackage``."""
    import httpx
    from argostranslate.package import AvailablePackage

    url = index_url()
    try:
        response = httpx.get(url, timeout=INDEX_TIMEOUT, follow_redirects=True)
        response.raise_for_status()
        entries = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TranslateError(
            f"cannot read the Argos package index at {url} ({exc.__class__.__name__}: "
            f"{exc}); it needs a network. Offline, copy a .argosmodel file here and run "
            "`monitor models install PATH.argosmodel`") from exc
    return [AvailablePackage(e) for e in entries
            if isinstance(e, dict) and e.get("type", "translate") == "translate"]


def install_from_index(language: str, target: str, dest: Path) -> list[PackageInfo]:
    """Download and install what translates ``language`` to ``target`` (via English if
    there is no direct package)."""
    source, goal = to_argos(language), to_argos(target)
    offered = available()
    by_pair = {(p.from_code, p.to_code): p for p in offered}
    chosen = ([by_pair[(source, goal)]] if (source, goal) in by_pair
              else [by_pair.get((source, PIVOT)), by_pair.get((PIVOT, goal))])
    if not all(chosen):
        raise TranslateError(f"the Argos index has no package from {language!r} to {target!r}")
    return [install_from_path(_download(p), dest) for p in chosen]


def _download(package: Any) -> Path:
    try:
        return Path(package.download())
    except Exception as exc:  # noqa: BLE001 - argostranslate raises bare Exception
        raise TranslateError(f"download of {package} failed: {exc}") from exc
