"""Key and field names of the dedupe state."""

from __future__ import annotations

import re

from models.payloads import ID_PATTERN
from services.core import keys
from services.core.settings import Settings


def test_dedupe_keys_are_per_platform_and_user_and_apart_from_the_old_markers():
    s = Settings()
    assert keys.message_dedupe(s, "discord", "42") == "vigil:dedupe:msg:discord:42"
    assert keys.detection_dedupe(s, "discord", "42") == "vigil:dedupe:det:discord:42"
    assert not keys.message_dedupe(s, "discord", "42").startswith("vigil:seen:")
    # Unchanged: envelope ids derive from these names.
    assert keys.message_marker(s, "discord", "m1") == "vigil:seen:msg:discord:m1"
    assert keys.detection_marker(s, "d1") == "vigil:seen:det:d1"


def test_dedupe_field_keeps_short_ids_and_hashes_long_ones_into_another_space():
    assert keys.dedupe_field("1187654321") == "1187654321"
    short = "a" * keys.DEDUPE_FIELD_MAX
    assert keys.dedupe_field(short) == short
    long_a, long_b = "a" * 128, "a" * 127 + "b"
    assert keys.dedupe_field(long_a) != keys.dedupe_field(long_b)
    assert keys.dedupe_field(long_a).startswith("#") and len(keys.dedupe_field(long_a)) == 25
    assert not re.match(ID_PATTERN, keys.dedupe_field(long_a))  # no id collides
