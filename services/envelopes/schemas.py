"""JSON Schemas of the envelope streams, one self-contained file per stream.

The committed files under ``schemas/`` are the contract downstream consumers
in any language validate against; a test fails when they drift from the
models. Regenerate with ``python -m services.envelopes.schemas``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.envelopes import SCHEMA_VERSION, STREAM_ADAPTERS, STREAM_TOPICS

# The repository's schemas/ folder (this file is services/envelopes/schemas.py).
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def file_name(stream_name: str) -> str:
    return f"{stream_name}.v{SCHEMA_VERSION}.json"


def current() -> dict[str, dict[str, Any]]:
    """Stream name -> its JSON Schema, generated from the envelope models."""
    out: dict[str, dict[str, Any]] = {}
    for stream_name, adapter in STREAM_ADAPTERS.items():
        schema = adapter.json_schema(mode="validation")
        out[stream_name] = {
            "$schema": DIALECT,
            "$id": f"urn:vigil:stream:{stream_name}:v{SCHEMA_VERSION}",
            "title": f"vigil {stream_name} stream envelope, schema_version {SCHEMA_VERSION}",
            "description": (
                "One Redis Streams entry has a single field 'data' holding this JSON. "
                f"Topics: {', '.join(STREAM_TOPICS[stream_name])}."
            ),
            **schema,
        }
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(
    directory: Path, schemas: dict[str, dict[str, Any]], name_of: Callable[[str], str]
) -> list[Path]:
    """One rendered file per schema, named by ``name_of`` (also the task schemas')."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas.items():
        path = directory / name_of(name)
        path.write_text(render(schema))
        written.append(path)
    return written


def export(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write one file per stream (the repo's ``schemas/`` by default)."""
    return write(directory, current(), file_name)


if __name__ == "__main__":
    for written_path in export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR):
        print(written_path)
