"""Mapping registry: reload on change, last good version kept, broken files reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import MappingError, MappingFileError
from gateway.mapping import MappingRegistry, check_mapping_files, test_mapping
from gateway.parsers.base import DocumentUnit

REPO = Path(__file__).resolve().parent.parent

GOOD = """<?xml version="1.0"?>
<mapping xmlns="urn:b2b-gateway:mapping:1" kind="order">
  <match standard="X12" type="850"/>
  <field name="subject" value="{subject}"/>
</mapping>
"""
BROKEN = """<?xml version="1.0"?>
<mapping xmlns="urn:b2b-gateway:mapping:1" kind="order">
  <match standard="X12" type="850"/>
  <field name="subject" xpath="//BEG[["/>
</mapping>
"""


def unit(doc_type: str = "850") -> DocumentUnit:
    return DocumentUnit(standard="X12", doc_type=doc_type, tree=etree.fromstring(b"<Interchange/>"))


def write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text, encoding="utf-8")
    # file systems with coarse timestamps could hide a quick edit; move mtime on
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def subject(reg: MappingRegistry) -> str | None:
    return reg.select(unit(), channel="sftp", partner=None).apply(unit()).subject


def test_reload_on_change_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "order.xml"
    write(path, GOOD.format(subject="one"))
    reg = MappingRegistry(tmp_path)
    assert reg.load() == []
    assert subject(reg) == "one"
    assert reg.reload_if_changed() == []  # nothing changed
    write(path, GOOD.format(subject="two"), bump=5)
    assert reg.reload_if_changed() == []
    assert subject(reg) == "two"
    ref = reg.mappings()[0]
    assert ref.name == "order.xml"
    assert len(ref.sha256) == 64


def test_broken_edit_keeps_last_good_and_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "order.xml"
    write(path, GOOD.format(subject="good"))
    reg = MappingRegistry(tmp_path)
    reg.load()
    write(path, BROKEN, bump=5)
    problems = reg.reload_if_changed()
    assert len(problems) == 1
    assert problems[0].file.endswith("order.xml")
    assert problems[0].line == 4
    assert "bad XPath" in problems[0].reason
    assert subject(reg) == "good"  # last good version still active
    assert reg.problems() == problems
    # fixing the file clears the problem and activates the fix
    write(path, GOOD.format(subject="fixed"), bump=10)
    assert reg.reload_if_changed() == []
    assert reg.problems() == []
    assert subject(reg) == "fixed"


def test_new_broken_file_not_activated(tmp_path: Path) -> None:
    write(tmp_path / "a.xml", GOOD.format(subject="a"))
    reg = MappingRegistry(tmp_path)
    reg.load()
    write(tmp_path / "b.xml", BROKEN.replace('type="850"', 'type="810"'))
    problems = reg.reload_if_changed()
    assert [p.file.endswith("b.xml") for p in problems] == [True]
    assert [m.name for m in reg.mappings()] == ["a.xml"]
    with pytest.raises(MappingError, match="no mapping matches X12 810"):
        reg.select(unit("810"), channel="sftp", partner=None)


def test_deleted_and_added_files(tmp_path: Path) -> None:
    write(tmp_path / "a.xml", GOOD.format(subject="a"))
    reg = MappingRegistry(tmp_path)
    reg.load()
    (tmp_path / "a.xml").unlink()
    write(tmp_path / "b.xml", GOOD.format(subject="b"))
    assert reg.reload_if_changed() == []
    assert [m.name for m in reg.mappings()] == ["b.xml"]
    assert subject(reg) == "b"


def test_load_reports_all_problems_at_once(tmp_path: Path) -> None:
    write(tmp_path / "a.xml", BROKEN)
    write(tmp_path / "b.xml", "<mapping")
    write(tmp_path / "c.xml", GOOD.format(subject="c"))
    reg = MappingRegistry(tmp_path)
    problems = reg.load()
    assert sorted(Path(p.file).name for p in problems) == ["a.xml", "b.xml"]
    assert [m.name for m in reg.mappings()] == ["c.xml"]


def test_min_interval_throttles_scans(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    write(path, GOOD.format(subject="one"))
    reg = MappingRegistry(tmp_path, min_interval=3600)
    reg.load()
    write(path, GOOD.format(subject="two"), bump=5)
    reg.reload_if_changed()
    assert subject(reg) == "one"


def test_shared_codelist_change_recompiles(tmp_path: Path) -> None:
    (tmp_path / "codelists").mkdir()
    cl = tmp_path / "codelists" / "s.xml"
    write(cl, '<codelist xmlns="urn:b2b-gateway:mapping:1" name="s"><code value="x">one</code></codelist>')
    write(
        tmp_path / "a.xml",
        GOOD.format(subject="x").replace('value="x"/>', 'value="x"><lookup codelist="s"/></field>'),
    )
    reg = MappingRegistry(tmp_path)
    assert reg.load() == []
    assert subject(reg) == "one"
    write(cl, '<codelist xmlns="urn:b2b-gateway:mapping:1" name="s"><code value="x">two</code></codelist>', 5)
    assert reg.reload_if_changed() == []
    assert subject(reg) == "two"


def test_check_and_test_mapping(tmp_path: Path) -> None:
    write(tmp_path / "bad.xml", BROKEN)
    found = check_mapping_files([tmp_path / "bad.xml"])
    assert len(found) == 1
    assert str(found[0]).startswith(str(tmp_path / "bad.xml") + ":4:")
    with pytest.raises(MappingFileError):
        test_mapping(tmp_path / "bad.xml", [unit()])
    write(tmp_path / "good.xml", GOOD.format(subject="s"))
    results = test_mapping(tmp_path / "good.xml", [unit(), unit("810")])
    assert [r.subject for r in results] == ["s", "s"]


def test_shipped_mappings_all_load() -> None:
    reg = MappingRegistry(REPO / "mappings")
    assert reg.load() == []
    assert reg.warnings() == []
    assert check_mapping_files(sorted((REPO / "mappings").glob("*.xml"))) == []
