"""Small builders shared by the pipeline and CLI tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import REPO


def copy_config(target: Path, *, mappings: Path | None = None) -> Path:
    """A copy of the shipped config whose mappings directory is absolute."""
    shutil.copytree(REPO / "config", target)
    mdir = mappings or (REPO / "mappings")
    text = (target / "gateway.toml").read_text().replace('"../mappings"', f'"{mdir}"')
    (target / "gateway.toml").write_text(text)
    return target


def x12_850(icn: int = 1, *, sender: str = "DEMOPARTNER", po: str = "PO-1", qty: str = "3") -> bytes:
    segs = [
        "ST*850*0001",
        f"BEG*00*SA*{po}**20240105",
        "N1*ST*DEMO WAREHOUSE*92*0001",
        f"PO1*1*{qty}*EA*12.50**VP*PART-1",
        "PID*F****WIDGET",
        "CTT*1",
    ]
    segs.append(f"SE*{len(segs) + 1}*0001")
    isa = f"ISA*00*          *00*          *ZZ*{sender:<15}*ZZ*GATEWAY        *240105*1200*U*00401*{icn:09d}*0*P*>"
    return (
        "~".join(
            [
                isa,
                f"GS*PO*{sender}*GATEWAY*20240105*1200*{icn}*X*004010",
                *segs,
                f"GE*1*{icn}",
                f"IEA*1*{icn:09d}",
            ]
        )
        + "~\n"
    ).encode()


def x12_940(icn: int = 7) -> bytes:
    segs = ["ST*940*0001", "W05*N*ORDER-9", "LX*1", "W01*1*EA**VN*ABC"]
    segs.append(f"SE*{len(segs) + 1}*0001")
    isa = f"ISA*00*          *00*          *ZZ*DEMOPARTNER    *ZZ*GATEWAY        *240105*1200*U*00401*{icn:09d}*0*P*>"
    return (
        "~".join(
            [
                isa,
                f"GS*OW*DEMOPARTNER*GATEWAY*20240105*1200*{icn}*X*004010",
                *segs,
                f"GE*1*{icn}",
                f"IEA*1*{icn:09d}",
            ]
        )
        + "~"
    ).encode()
