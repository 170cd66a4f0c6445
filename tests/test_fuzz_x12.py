"""Fuzzing the X12 parser: any input yields units or raises ParseError with a position.

Anything else (IndexError, lxml's ValueError, a hang) is a bug.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ParseError
from gateway.parsers.x12 import X12Parser

from .conftest import CORPUS, need_peer

PARSER = X12Parser()
SAMPLES = sorted(CORPUS.glob("x12/*.edi")) if CORPUS.is_dir() else []
FUZZ = settings(
    max_examples=300,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(data: bytes) -> None:
    error: ParseError | None = None
    try:
        for unit in PARSER.parse(data):
            assert unit.tree.tag == "Interchange"
            assert unit.doc_type
    except ParseError as exc:
        error = exc
    if error is not None:
        assert str(error.position) != "unknown position", error


# Characters that matter to X12 syntax, so mutations hit the interesting paths.
SPECIAL = st.sampled_from(
    [*"*~^:>|`-\n\r \x1c\x1d\x1e\x1f\u2026\x00\xff", "ISA", "IEA", "GE", "SE", "ST", "HL"]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    if not SAMPLES:
        need_peer(f"the shared corpus at {CORPUS}")
    path = draw(st.sampled_from(SAMPLES))
    data = bytearray(path.read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "duplicate"]))
        if op == "replace":
            data[at : at + 1] = draw(SPECIAL).encode()
        elif op == "insert":
            data[at:at] = draw(st.one_of(SPECIAL.map(str.encode), st.binary(max_size=8)))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif op == "truncate":
            del data[at:]
        else:
            end = min(len(data), at + draw(st.integers(1, 200)))
            data[end:end] = data[at:end]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_corpus_files(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_isa(tail: bytes) -> None:
    isa = b"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *240101*1200*^*00501*000000001*0*P*:~"
    check(isa + tail)


@FUZZ
@given(
    st.text(alphabet=st.characters(codec="latin-1"), min_size=1, max_size=1),
    st.text(alphabet=st.characters(codec="latin-1"), min_size=1, max_size=1),
    st.text(alphabet=st.characters(codec="latin-1"), min_size=1, max_size=1),
    st.text(alphabet=st.characters(codec="latin-1"), min_size=1, max_size=1),
)
def test_any_delimiters(sep: str, rep: str, comp: str, term: str) -> None:
    """Every choice of delimiters parses or is refused; never a crash or a hang."""
    segs = [
        "ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *240101*1200*^*00501*000000001*0*P*:",
        "GS*PO*S*R*20240101*1200*1*X*005010",
        "ST*850*0001",
        "BEG*00*SA*P:1^P:2",
        "SE*3*0001",
        "GE*1*1",
        "IEA*1*000000001",
    ]
    text = "~".join(segs) + "~"
    table = str.maketrans({"*": "\0", "^": "\1", ":": "\2", "~": "\3"})
    text = text.translate(table).replace("\0", sep).replace("\1", rep).replace("\2", comp).replace("\3", term)
    check(text.encode("utf-8"))


def test_corpus_samples_found(corpus: Path) -> None:
    assert len(SAMPLES) == len(list((corpus / "x12").glob("*.edi")))
