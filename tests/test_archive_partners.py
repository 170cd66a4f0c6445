from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.archive import Archive
from gateway.config import PartnerProfile
from gateway.errors import StoreUnavailable
from gateway.partners import PartnerDirectory


def test_archive_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    data = b"ISA*00*...~"
    digest = archive.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert archive.put(data) == digest
    assert archive.get(digest) == data
    assert archive.path_for(digest).parent.name == digest[:2]
    leftovers = [p for p in (tmp_path / "a").rglob(".incoming-*")]
    assert leftovers == []


def test_archive_streams_files(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    digest, size = Archive(tmp_path / "a").put_file(src)
    assert size == src.stat().st_size
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()


def test_archive_failure_is_temporary_when_path_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot write to the archive"):
        Archive(blocker).put(b"x")


def _profile(pid: str, *idents: tuple[str, str]) -> PartnerProfile:
    return PartnerProfile(id=pid, name=pid.title(), source=Path(f"{pid}.toml"), identities=idents)


def test_partner_resolution_precedence() -> None:
    directory = PartnerDirectory(
        [
            _profile("acme", ("x12", "ZZ:ACME"), ("email_domain", "acme.test")),
            _profile("bob", ("email", "bob@acme.test")),
        ]
    )
    assert directory.resolve({"x12": "zz:acme"}).id == "acme"  # type: ignore[union-attr]
    # an exact address beats its domain
    assert directory.resolve({"email": "Bob@ACME.test"}).id == "bob"  # type: ignore[union-attr]
    assert directory.resolve({"email": "carol@acme.test"}).id == "acme"  # type: ignore[union-attr]
    # the document's own identifiers beat the transport's
    assert directory.resolve({"x12": "ZZ:ACME"}, {"email": "bob@acme.test"}).id == "acme"  # type: ignore[union-attr]
    assert directory.resolve({"x12": "ZZ:NOBODY"}) is None


def test_inactive_partner_is_not_resolved() -> None:
    inactive = PartnerProfile(
        id="old", name="Old", source=Path("old.toml"), identities=(("as2", "OLD"),), active=False
    )
    assert PartnerDirectory([inactive]).resolve({"as2": "OLD"}) is None


def test_archive_recovers_when_a_known_directory_is_removed(tmp_path: Path) -> None:
    import shutil

    archive = Archive(tmp_path / "a")
    first = archive.put(b"one")
    shutil.rmtree(tmp_path / "a")
    assert archive.put(b"one") == first  # written again, not assumed present
    assert archive.get(first) == b"one"


def test_archive_write_then_sync_dir_is_put_in_two_halves(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    data = b"UNB+UNOC:3+X+Y'"
    digest, directory = archive.write(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert directory == archive.path_for(digest).parent
    assert archive.get(digest) == data  # renamed into place, fsynced
    archive.sync_dir(directory)  # the rename made durable (what a group commit does once)
    # already there: the directory is still named, its writer may not have synced it yet
    assert archive.write(data) == (digest, directory)
    assert list((tmp_path / "a").rglob(".incoming-*")) == []


def test_archive_sync_dir_failure_is_temporary(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot write to the archive"):
        Archive(tmp_path / "a").sync_dir(tmp_path / "a" / "gone")
