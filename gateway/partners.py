"""Identity resolution: which partner sent this?"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.config import PartnerProfile, normalise_identity
from gateway.record import PartnerRef

# When a message carries several identifiers, the most specific one wins: a document's
# own envelope ids before transport ids, an exact address before a whole domain.
PRECEDENCE = ("x12", "edifact", "as2", "sftp", "fax", "email", "email_domain")


class PartnerDirectory:
    def __init__(self, profiles: Iterable[PartnerProfile]) -> None:
        self._by_identity: dict[tuple[str, str], PartnerProfile] = {}
        self._by_id: dict[str, PartnerProfile] = {}
        for profile in profiles:
            if not profile.active:
                continue
            self._by_id[profile.id] = profile
            for ident in profile.identities:
                self._by_identity.setdefault(ident, profile)

    def get(self, partner_id: str) -> PartnerProfile | None:
        return self._by_id.get(partner_id)

    def resolve(self, *identities: Mapping[str, str]) -> PartnerRef | None:
        """First match in :data:`PRECEDENCE` order across all identity maps given."""
        merged: dict[str, list[str]] = {}
        for ids in identities:
            for kind, value in ids.items():
                if value:
                    merged.setdefault(kind, []).append(value)
        if "email" in merged and "email_domain" not in merged:
            merged["email_domain"] = [v.rpartition("@")[2] for v in merged["email"]]
        for kind in PRECEDENCE:
            for value in merged.get(kind, []):
                profile = self._by_identity.get((kind, normalise_identity(kind, value)))
                if profile is not None:
                    return PartnerRef(profile.id, profile.name)
        return None
