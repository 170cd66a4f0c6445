"""Mapping files: canonical XML -> interaction record fields.

See ``docs/mapping-files.md`` for the file format and ``schemas/mapping.xsd``.
"""

from __future__ import annotations

from gateway.mapping.engine import (
    CompiledMapping,
    MappingResult,
    Match,
    compile_mapping,
    is_warning,
)
from gateway.mapping.registry import (
    MappingRegistry,
    check_mapping_files,
    load_mapping,
    test_mapping,
)

__all__ = [
    "CompiledMapping",
    "MappingRegistry",
    "MappingResult",
    "Match",
    "check_mapping_files",
    "compile_mapping",
    "is_warning",
    "load_mapping",
    "test_mapping",
]
