"""The gateway's rules: loaded from the configured files, kept as "last good" in the
data directory, reloaded on a file change or SIGHUP.

Contract:

- ``load_rules(settings)`` compiles the configured rule and station files, or raises
  ``rules.errors.RulesInvalid`` with ``file:line:col`` lines.
- ``RulesSource.start()`` is the rule set to start on. The configured files when they
  are valid (and they become the last good set: copied into
  ``<data_dir>/rules-last-good/``); when they are not, the last good copy, with every
  problem of the files logged at ERROR and kept in ``state.errors`` for ``/readyz``
  and ``vigil status``, so that a bad edit plus a restart does not leave the gateway
  down. With no last good copy yet, ``RulesInvalid`` is raised (nothing valid to run).
- ``RulesSource.reload(force)`` is called on a timer (``force`` False: only when a
  file's modification time changed) and on SIGHUP (``force`` True). It returns the new
  rule set once it validates, None otherwise (the running one stays, errors logged).
- A rule whose selection matches no station is a warning (``state.warnings``), never a
  reason to refuse the rules: a shipped pack must start on any site's registry.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from engine.contracts.ruleset import RuleSet
from engine.runtime.config import Settings
from engine.runtime.services.state import RulesState
from rules.api import load_ruleset
from rules.errors import RulesInvalid
from rules.registry import Registry, load_registry

__all__ = ["LAST_GOOD_DIR", "Loaded", "RulesSource", "load_rules"]

log = logging.getLogger(__name__)

#: Folder of the data directory holding copies of the last rule set that loaded.
LAST_GOOD_DIR = "rules-last-good"

Loaded = tuple[RuleSet, frozenset[str]]


def load_rules(settings: Settings) -> Loaded:
    """Compile the configured rules; returns them with the registry's station ids.

    Raises ``rules.errors.RulesInvalid`` with ``file:line:col`` lines.
    """
    return _compile(settings.stations, settings.rules)[0]


def _compile(
    stations: Path, rule_files: tuple[Path, ...] | list[Path]
) -> tuple[Loaded, list[str], Registry]:
    """The rules and station ids, the checks' warnings (logged here), and the registry
    they were compiled against (station kinds for ``/metrics``, field identities)."""
    registry = load_registry(stations)
    compiled = load_ruleset(list(rule_files), registry)
    for warning in compiled.warnings:
        log.warning("rules: %s", warning)
    loaded = compiled.ruleset, frozenset(s.id for s in registry.stations)
    return loaded, list(compiled.warnings), registry


class RulesSource:
    """Where the running rules come from, and the record of that in ``state``."""

    def __init__(self, settings: Settings, state: RulesState) -> None:
        self.settings = settings
        self.state = state
        self.last_good = settings.data_dir / LAST_GOOD_DIR
        self._watched = self._mtimes()
        #: The registry of the rules running now, and its station id -> kind.
        self.registry: Registry | None = None
        self.station_kinds: dict[str, str] = {}

    def _mtimes(self) -> dict[str, int]:
        paths = (self.settings.stations, *self.settings.rules)
        return {str(p): p.stat().st_mtime_ns if p.exists() else -1 for p in paths}

    def start(self) -> Loaded:
        """The rules to start on (see the module's contract)."""
        try:
            loaded, warnings, kinds = _compile(self.settings.stations, self.settings.rules)
        except (RulesInvalid, OSError) as exc:
            lines = _lines(exc)
            fallback = self._load_last_good()
            if fallback is None:
                raise
            for line in lines:
                log.error("rules rejected at start, running the last good rules: %s", line)
            self._record(fallback[0], "last-good", lines, fallback[1])
            self._keep(fallback[2])
            return fallback[0]
        self._save_last_good()
        self._record(loaded, "files", [], warnings)
        self._keep(kinds)
        return loaded

    def reload(self, *, force: bool) -> Loaded | None:
        """New rules when the files changed (or ``force``) and validate, else None."""
        mtimes = self._mtimes()
        if not force and mtimes == self._watched:
            return None
        self._watched = mtimes
        try:
            loaded, warnings, kinds = _compile(self.settings.stations, self.settings.rules)
        except (RulesInvalid, OSError) as exc:
            self.state.errors = _lines(exc)
            for line in self.state.errors:
                log.error("rules reload rejected, the running rules stay: %s", line)
            return None
        old_version = self.state.version
        self._save_last_good()
        self._record(loaded, "files", [], warnings)
        self._keep(kinds)
        if loaded[0].version == old_version:
            log.info("rules reloaded: unchanged (version %s)", old_version)
        return loaded

    def _record(self, loaded: Loaded, source: str, errors: list[str], warnings: list[str]) -> None:
        s = self.state
        s.version, s.count, s.stations = loaded[0].version, _count(loaded[0]), len(loaded[1])
        s.source, s.errors, s.warnings = source, errors, warnings
        s.loaded_at_ms = int(time.time() * 1000)

    # ---- the last good copy --------------------------------------------------------------

    def _save_last_good(self) -> None:
        """Copy the files that just loaded into the data directory (atomically: a new
        folder renamed over the old one, so a crash leaves one whole copy)."""
        target = self.last_good
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        stations = self._copy(self.settings.stations, staging, "stations")
        rules = [self._copy(p, staging, f"rules-{i}") for i, p in enumerate(self.settings.rules)]
        origin = [str(self.settings.stations), *map(str, self.settings.rules)]
        manifest = {"stations": stations, "rules": rules, "from": origin}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _copy(path: Path, folder: Path, stem: str) -> str:
        name = f"{stem}{path.suffix}"  # the suffix tells a CSV registry from YAML
        shutil.copyfile(path, folder / name)
        return name

    def _keep(self, registry: Registry) -> None:
        self.registry = registry
        self.station_kinds = {s.id: str(s.kind) for s in registry.stations}

    def _load_last_good(self) -> tuple[Loaded, list[str], Registry] | None:
        manifest_path = self.last_good / "manifest.json"
        if not manifest_path.exists():
            return None
        manifest = json.loads(manifest_path.read_text())
        folder = self.last_good
        try:
            return _compile(folder / manifest["stations"], [folder / r for r in manifest["rules"]])
        except (RulesInvalid, OSError) as exc:  # e.g. a newer engine rejects them
            for line in _lines(exc):
                log.error("the last good rules do not load either: %s", line)
            return None


def _lines(exc: Exception) -> list[str]:
    return exc.lines if isinstance(exc, RulesInvalid) else [str(exc)]


def _count(ruleset: RuleSet) -> int:
    return (
        len(ruleset.rules) + len(ruleset.compound) + len(ruleset.derived)
        + len(ruleset.corroboration)
    )  # fmt: skip
