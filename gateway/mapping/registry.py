"""The set of active mappings, reloaded from disk while the gateway runs.

Administrators edit files in the mappings directory in place. A broken edit must
never take a working mapping away: the last good version stays active and the
problem is reported. Change detection is stat-based (mtime, size, inode) so it is
cheap enough to run before every message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import MappingError, MappingFileError, Problem
from gateway.mapping.engine import (
    WARNING,
    CompiledMapping,
    MappingResult,
    compile_mapping,
    load_codelist_file,
)
from gateway.mapping.transforms import CodeList
from gateway.parsers.base import DocumentUnit

CODELIST_DIR = "codelists"

_Signature = tuple[int, int, int]
#: what :meth:`MappingRegistry.select` depends on: standard, type, channel, partner
_SelectKey = tuple[str, str, str, str | None]
_SELECT_CACHE_SIZE = 4096


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _scan(directory: Path) -> dict[str, _Signature]:
    out: dict[str, _Signature] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        # editors leave hidden swap/backup files around; never load them
        if not entry.name.endswith(".xml") or entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except OSError:
            continue
        out[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def tie_warnings(mappings: Sequence[CompiledMapping]) -> list[Problem]:
    """Two mappings declaring the same match: the one whose file name sorts first
    wins. Reported on the loser, which is never used for that match."""
    owners: dict[tuple[str, str, str, str], CompiledMapping] = {}
    problems: list[Problem] = []
    for m in sorted(mappings, key=lambda m: m.name):
        for match in m.matches:
            winner = owners.get(match.key)
            if winner is None:
                owners[match.key] = m
            elif winner is not m:
                problems.append(
                    Problem(
                        str(m.path),
                        match.line,
                        f"{WARNING}match ({match}) is also declared by {winner.name}, "
                        f"which wins because its file name sorts first",
                    )
                )
    return problems


@dataclass
class _FileState:
    signature: _Signature
    #: the version in use: the newest one that compiled
    active: CompiledMapping | None = None
    problems: list[Problem] = field(default_factory=list)


class MappingRegistry:
    """Active mappings of one directory. Thread-safe."""

    def __init__(self, directory: Path, *, min_interval: float = 0.0) -> None:
        self.directory = Path(directory)
        #: seconds between two directory scans in :meth:`reload_if_changed`
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._files: dict[str, _FileState] = {}
        self._codelist_sigs: dict[str, _Signature] = {}
        self._codelists: dict[str, CodeList] = {}
        self._codelist_problems: dict[str, list[Problem]] = {}
        # replaced as a whole, so readers never see a half-updated list; the
        # selection cache belongs to one snapshot and is replaced with it
        self._state: tuple[tuple[CompiledMapping, ...], dict[_SelectKey, CompiledMapping | None]] = ((), {})
        self._last_scan = 0.0

    # --- loading ------------------------------------------------------------------

    def load(self) -> list[Problem]:
        """(Re)load everything. Returns every problem, warnings excluded."""
        with self._lock:
            self._files.clear()
            self._codelist_sigs.clear()
            self._codelists.clear()
            self._codelist_problems.clear()
            self._reload_locked(force=True)
            return self._problems_locked()

    def reload_if_changed(self) -> list[Problem]:
        """Pick up added, changed and deleted files. Returns the problems found in
        files that changed in this call (empty when nothing changed or all is well)."""
        with self._lock:
            now = time.monotonic()
            if self.min_interval and now - self._last_scan < self.min_interval:
                return []
            return self._reload_locked(force=False)

    def _reload_locked(self, *, force: bool) -> list[Problem]:
        self._last_scan = time.monotonic()
        new: list[Problem] = []
        codelists_changed = self._reload_codelists(new)
        scan = _scan(self.directory)
        for name in set(self._files) - set(scan):
            del self._files[name]
        for name, sig in sorted(scan.items()):
            state = self._files.get(name)
            if state is not None and state.signature == sig and not codelists_changed and not force:
                continue
            compiled, problems = compile_mapping(self.directory / name, name=name, codelists=self._codelists)
            if state is None:
                state = _FileState(sig)
                self._files[name] = state
            state.signature = sig
            if compiled is not None:
                state.active = compiled
                state.problems = []
            else:
                state.problems = problems
                new.extend(problems)
        snapshot = tuple(st.active for _, st in sorted(self._files.items()) if st.active is not None)
        if snapshot != self._state[0]:
            self._state = (snapshot, {})
        return new

    def _reload_codelists(self, new: list[Problem]) -> bool:
        scan = _scan(self.directory / CODELIST_DIR)
        if scan == self._codelist_sigs:
            return False
        changed = False
        for name in set(self._codelist_sigs) - set(scan):
            self._codelists.pop(Path(name).stem, None)
            self._codelist_problems.pop(name, None)
            changed = True
        for name, sig in scan.items():
            if self._codelist_sigs.get(name) == sig:
                continue
            cl, problems = load_codelist_file(self.directory / CODELIST_DIR / name)
            if cl is None:
                # keep the previous version of the list, like for mappings
                self._codelist_problems[name] = problems
                new.extend(problems)
            else:
                self._codelists[cl.name] = cl
                self._codelist_problems.pop(name, None)
                changed = True
        self._codelist_sigs = scan
        return changed

    # --- queries ------------------------------------------------------------------

    def _problems_locked(self) -> list[Problem]:
        out: list[Problem] = []
        for name in sorted(self._codelist_problems):
            out.extend(self._codelist_problems[name])
        for name in sorted(self._files):
            out.extend(self._files[name].problems)
        return out

    def problems(self) -> list[Problem]:
        """Problems of the current files (a broken file whose last good version is
        still active is listed here until it is fixed)."""
        with self._lock:
            return self._problems_locked()

    def warnings(self) -> list[Problem]:
        """Findings that do not stop loading, e.g. two mappings with the same match."""
        return tie_warnings(self._state[0])

    def mappings(self) -> list[CompiledMapping]:
        return list(self._state[0])

    def select(self, unit: DocumentUnit, *, channel: str, partner: str | None) -> CompiledMapping:
        """The most specific mapping for ``unit`` (partner > channel > type >
        standard); equal candidates are decided by file name."""
        snapshot, cache = self._state
        # the choice depends on these four values only; remembered per snapshot
        key = (unit.standard, unit.doc_type, channel, partner)
        try:
            best = cache[key]
        except KeyError:
            best = None
            best_score = -1
            for m in snapshot:  # sorted by name: the first of equals wins
                score = m.score(unit, channel, partner)
                if score is not None and score > best_score:
                    best, best_score = m, score
            if len(cache) >= _SELECT_CACHE_SIZE:
                cache.clear()  # document types are data: keep the cache bounded
            cache[key] = best
        if best is None:
            raise MappingError(
                f"no mapping matches {unit.standard} {unit.doc_type or '(no type)'} "
                f"(channel {channel}, partner {partner or 'unknown'})"
            )
        return best


# --- administrator tools -------------------------------------------------------------


def _codelists_for(directory: Path, problems: list[Problem]) -> dict[str, CodeList]:
    out: dict[str, CodeList] = {}
    for name in sorted(_scan(directory / CODELIST_DIR)):
        cl, found = load_codelist_file(directory / CODELIST_DIR / name)
        problems.extend(found)
        if cl is not None:
            out[cl.name] = cl
    return out


def check_mapping_files(paths: Sequence[Path]) -> list[Problem]:
    """Everything wrong with ``paths`` (mapping or code list files): XSD errors,
    bad XPath, unknown transforms and code lists, forbidden XSLT. Warnings (reason
    starting with ``warning:``) report match ties between the given mappings."""
    problems: list[Problem] = []
    codelists_by_dir: dict[Path, dict[str, CodeList]] = {}
    compiled: list[CompiledMapping] = []
    for path in paths:
        path = Path(path)
        if path.parent.name == CODELIST_DIR:
            _, found = load_codelist_file(path)
            problems.extend(found)
            continue
        directory = path.parent
        if directory not in codelists_by_dir:
            codelists_by_dir[directory] = _codelists_for(directory, problems)
        m, found = compile_mapping(path, codelists=codelists_by_dir[directory])
        problems.extend(found)
        if m is not None:
            compiled.append(m)
    problems.extend(tie_warnings(compiled))
    return problems


def load_mapping(mapping_path: Path) -> CompiledMapping:
    """Compile one mapping file with the code lists next to it, or raise
    :class:`MappingFileError` with every problem."""
    problems: list[Problem] = []
    codelists = _codelists_for(mapping_path.parent, problems)
    m, found = compile_mapping(mapping_path, codelists=codelists)
    if m is None:
        raise MappingFileError(found or problems)
    return m


def test_mapping(mapping_path: Path, units: Sequence[DocumentUnit]) -> list[MappingResult]:
    """Apply one mapping to sample units, whatever its ``match`` says (for
    ``gateway mapping test``). Raises MappingFileError or MappingError."""
    m = load_mapping(Path(mapping_path))
    results: list[MappingResult] = []
    for unit in units:
        try:
            results.append(m.apply(unit))
        except MappingError as exc:
            raise MappingError(
                f"unit {unit.index} ({unit.standard} {unit.doc_type}): {exc.message}"
            ) from None
    return results


# pytest would collect test_mapping as a test when a test module imports it by name
test_mapping.__test__ = False  # type: ignore[attr-defined]
