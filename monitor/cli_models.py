"""`monitor models ...` (translation packages) and `monitor translate` (the sweep on
demand, or one text). Registered by monitor.cli; errors reach its one-line handler."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from monitor import cli as cli_module
from monitor import packages
from monitor.errors import TranslateError
from monitor.packages import PackageInfo, Route
from monitor.translate import shared_translator

if TYPE_CHECKING:
    from monitor.cli import State


def _row(p: PackageInfo, size: int | None = None) -> dict[str, Any]:
    row = {"from": p.from_code, "to": p.to_code, "package": p.name, "version": p.version,
           "path": str(p.path)}
    return row | ({"size_bytes": size} if size is not None else {})


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


@click.group("models")
def models() -> None:
    """Translation packages (Argos Translate)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_cmd(state: State, as_json: bool) -> None:
    """Installed packages: language pair, version, size, path."""
    dirs = packages.package_dirs(state.settings.translation)
    rows = [_row(p, packages.size_of(p.path)) for p in packages.installed(dirs)]
    if as_json:
        cli_module.emit_json(rows)
    elif not rows:
        click.echo(f"no translation packages in {', '.join(map(str, dirs))}; "
                   "install one with `monitor models install LANG|PATH.argosmodel`")
    for r in [] if as_json else rows:
        click.echo(f"{r['from']:>3} -> {r['to']:<3} {r['package']:<18} {r['version']:<8} "
                   f"{_mb(r['size_bytes']):>10}  {r['path']}")


@models.command("available")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def available_cmd(state: State, as_json: bool) -> None:
    """Packages in the Argos index (needs a network)."""
    dirs = packages.package_dirs(state.settings.translation)
    have = {(p.from_code, p.to_code) for p in packages.installed(dirs)}
    rows = [{"from": p.from_code, "to": p.to_code, "version": p.package_version,
             "installed": (p.from_code, p.to_code) in have} for p in packages.available()]
    if as_json:
        cli_module.emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['from']:>3} -> {r['to']:<3} {r['version']:<8}"
                   + ("  (installed)" if r["installed"] else ""))


@models.command("install")
@click.argument("what", metavar="LANG|PATH.argosmodel")
@click.pass_obj
def install_cmd(state: State, what: str) -> None:
    """Install a package file, or download the package(s) for LANG -> the target language."""
    settings = state.settings.translation
    dest = packages.install_dir(settings)
    path = Path(what).expanduser()
    if path.suffix == ".argosmodel" or path.exists():
        done = [packages.install_from_path(path, dest)]
    else:
        done = packages.install_from_index(what, settings.target, dest)
    for p in done:
        click.echo(f"installed {p.name} {p.version} ({p.from_code} -> {p.to_code}) in {p.path}")
    click.echo("run `monitor translate --pending` to translate the items waiting for it")


@models.command("remove")
@click.argument("what", metavar="LANG")
@click.pass_obj
def remove_cmd(state: State, what: str) -> None:
    """Remove the installed packages that translate from LANG (or the package named so)."""
    dirs = packages.package_dirs(state.settings.translation)
    for p in packages.remove(dirs, what):
        click.echo(f"removed {p.name} {p.version} ({p.path})")


def _route(state: State, language: str) -> Route:
    target = state.settings.translation.target
    route = shared_translator(state.settings.translation).route(language, target)
    if route is None:
        raise TranslateError(f"no {language}->{target} translation model installed; "
                             f"run `monitor models install {language}`")
    return route


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TranslateError(f"{path}: cannot read: {exc}") from exc


@models.command("evaluate")
@click.option("--from", "language", required=True, help="Language of the source file.")
@click.option("--source", required=True, type=click.Path(dir_okay=False),
              help="One sentence (or segment) per line.")
@click.option("--reference", required=True, type=click.Path(dir_okay=False),
              help="Human translations, line by line.")
@click.option("--limit", type=int, default=None, help="Only the first N lines.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def evaluate_cmd(state: State, language: str, source: str, reference: str,
                 limit: int | None, as_json: bool) -> None:
    """BLEU and chrF (sacrebleu) of the installed model on your own parallel text."""
    import sacrebleu

    sources, references = _lines(source)[:limit], _lines(reference)[:limit]
    if len(sources) != len(references) or not sources:
        raise TranslateError(f"{source} has {len(sources)} lines and {reference} "
                             f"{len(references)}: they must pair up, line by line")
    route = _route(state, language)
    started = time.perf_counter()
    hypotheses = shared_translator(state.settings.translation).translate(route, sources)
    elapsed = time.perf_counter() - started
    result = {"package": route.name, "version": route.version, "lines": len(sources),
              "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
              "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
              "seconds": round(elapsed, 2)}
    if as_json:
        cli_module.emit_json(result)
        return
    click.echo(f"{route.name} {route.version}: BLEU {result['bleu']:.1f}  "
               f"chrF {result['chrf']:.1f}  ({len(sources)} lines, {elapsed:.1f} s)")


@click.command("translate")
@click.argument("text", required=False)
@click.option("--from", "language", help="Language of TEXT.")
@click.option("--pending", is_flag=True, help="Translate the items waiting for translation.")
@click.option("--limit", type=int, default=None, help="With --pending: at most N items.")
@click.option("--retry-failed", is_flag=True, help="With --pending: retry failed items too.")
@click.pass_obj
def translate(state: State, text: str | None, language: str | None, pending: bool,
              limit: int | None, retry_failed: bool) -> None:
    """Translate pending items (--pending), or TEXT from --from LANG to the target."""
    if pending:
        sys.exit(_sweep(state, limit, retry_failed))
    if text is None or language is None:
        raise click.UsageError("give --pending, or TEXT with --from LANG")
    route = _route(state, language)
    click.echo(shared_translator(state.settings.translation).translate(route, [text])[0])


def _sweep(state: State, limit: int | None, retry_failed: bool) -> int:
    from monitor import workers
    from monitor.translating import pending_count, requeue_failed, sweep

    settings, sessions = state.settings, state.sessions()
    if not settings.translation.enabled:
        raise TranslateError("translation is disabled (translation.enabled = false)")
    if retry_failed:
        requeue_failed(sessions)
    total = pending_count(settings, sessions)
    total = total if limit is None else min(limit, total)
    worker = workers.worker_for(settings, "cli")
    with workers.running(worker, sessions), click.progressbar(
            length=total, label="translate", file=sys.stderr, show_pos=True) as bar:
        report = sweep(settings, sessions, limit, progress=bar.update, worker=worker)
    for error in report.errors:
        click.echo(f"monitor: {error}", err=True)
    click.echo(report.line())
    return 1 if report.failed or report.errors else 0
