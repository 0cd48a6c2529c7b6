"""The name rule: what a username or room name may contain (server/names.py)."""

from __future__ import annotations

import itertools
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.names import DEFAULT_IGNORABLE, DEFAULT_USERNAME, clean_name, is_allowed_in_name

REFUSED: dict[str, list[str]] = {
    "joiners": ["\u200c", "\u200d", "\u2060", "\u034f"],
    "zero-width and BOM": ["\u200b", "\ufeff", "\u2061", "\u2064"],
    "bidi marks, embeddings, overrides, isolates": [
        "\u061c", "\u200e", "\u200f", "\u202a", "\u202e", "\u2066", "\u2069", "\u206f",
    ],
    "soft hyphen": ["\u00ad"],
    "Hangul fillers": ["\u3164", "\u115f", "\u1160", "\uffa0"],
    "tag characters": ["\U000e0001", "\U000e0020", "\U000e0041", "\U000e007f"],
    "variation selectors": ["\ufe00", "\ufe0f", "\U000e0100", "\U000e01ef"],
    "Mongolian free variation selectors and vowel separator": [
        "\u180b", "\u180c", "\u180d", "\u180f", "\u180e",
    ],
    "Khmer inherent vowels": ["\u17b4", "\u17b5"],
    "interlinear annotation (Cf, not default-ignorable)": ["\ufff9", "\ufffa", "\ufffb"],
    "other format characters": ["\U0001bca0", "\U0001d173", "\u0600", "\U000110bd"],
    "reserved default-ignorable (Cn)": ["\u2065", "\ufff0", "\U000e0000", "\U000e0fff"],
    "C0 and C1 controls (Cc)": ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9f"],
    "line and paragraph separators (Zl, Zp)": ["\u2028", "\u2029"],
    "lone surrogates (Cs)": ["\ud800", "\udfff"],
    "private use (Co)": ["\ue000", "\uf8ff", "\U000f0000", "\U0010fffd"],
    "unassigned and noncharacters (Cn)": ["\u0378", "\ufdd0", "\ufffe", "\U0010ffff"],
    "blank-looking": ["\u2800"],
}
REFUSED_CASES = [(kind, ch) for kind, chars in REFUSED.items() for ch in chars]


@pytest.mark.parametrize(
    ("kind", "char"), REFUSED_CASES, ids=[f"{k}-U+{ord(c):04X}" for k, c in REFUSED_CASES]
)
def test_each_class_of_invisible_or_control_character_is_refused(kind: str, char: str) -> None:
    for name in (f"ali{char}ce", f"{char}alice", f"alice{char}", char * 3):
        stripped = name.strip()
        if stripped and stripped != "alice":  # C0/C1 whitespace (\x1c-\x1f, \x85) is trimmed
            assert clean_name(name, DEFAULT_USERNAME, 32) is None, (kind, name)


@pytest.mark.parametrize(
    "name",
    [
        "alice", "Bob Smith", "o'brien-2", "Zoë", "e\u0301te",  # a combining accent is visible
        "日本語", "한국어", "Ωmega", "мария", "مرحبا", "שלום", "हिन्दी", "🙂", "ok 👍🏽",
    ],
)
def test_ordinary_names_in_any_script_are_accepted(name: str) -> None:
    assert clean_name(name, DEFAULT_USERNAME, 32) == unicodedata.normalize("NFC", name.strip())


@pytest.mark.parametrize(
    "spelling",
    ["Bob  Smith", "Bob\u00a0Smith", "Bob\u2009Smith", "Bob\u3000Smith", "Bob \u00a0\u202f Smith",
     "\u00a0Bob\u00a0Smith\u00a0"],
)
def test_names_that_differ_only_in_their_spaces_are_one_name(spelling: str) -> None:
    """Before: "Bob\u00a0Smith" was another user than "Bob Smith", shown the same."""
    assert clean_name(spelling, DEFAULT_USERNAME, 32) == "Bob Smith"


def test_emoji_with_a_variation_selector_or_a_joiner_are_refused_by_design() -> None:
    """The documented cost of refusing every variation selector and joiner."""
    for name in ("love \u2764\ufe0f", "\U0001f468\u200d\U0001f469\u200d\U0001f467"):
        assert clean_name(name, DEFAULT_USERNAME, 32) is None


def test_blank_and_missing_names_still_mean_the_default() -> None:
    assert clean_name(None, DEFAULT_USERNAME, 32) == DEFAULT_USERNAME
    assert clean_name("  \u3000 ", DEFAULT_USERNAME, 32) == DEFAULT_USERNAME
    assert clean_name("x" * 33, DEFAULT_USERNAME, 32) is None


def _in_table(code: int) -> bool:
    return any(low <= code <= high for low, high in DEFAULT_IGNORABLE)


# Format characters that DerivedCoreProperties leaves out of Default_Ignorable_Code_Point
# (White_Space has none in Cf): the interlinear annotation characters, the Egyptian hieroglyph
# format controls and the Prepended_Concatenation_Mark characters (Unicode 14.0.0).
CF_NOT_IGNORABLE = {
    *range(0xFFF9, 0xFFFC), *range(0x13430, 0x13439), *range(0x0600, 0x0606), 0x06DD, 0x070F,
    0x0890, 0x0891, 0x08E2, 0x110BD, 0x110CD,
}


def test_the_default_ignorable_table_agrees_with_the_unicode_database() -> None:
    """Cross-checks the hand-written table with unicodedata: every Cf code point is in it unless
    the standard excludes it, the variation selectors are in it, and each range's category is
    one that DerivedCoreProperties can put there. A newer Python (another Unicode version)
    makes this fail where the table needs updating."""
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category == "Cf":
            assert _in_table(code) or code in CF_NOT_IGNORABLE, f"U+{code:04X}"
        if _in_table(code):
            assert category in {"Cf", "Cn", "Mn", "Lo"}, f"U+{code:04X} is {category}"
    for selector in (*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x180B, 0x180C, 0x180D):
        assert _in_table(selector)
    assert all(low <= high for low, high in DEFAULT_IGNORABLE)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(DEFAULT_IGNORABLE))


def _refused_character(ch: str) -> bool:
    return _in_table(ord(ch)) or unicodedata.category(ch) in {
        "Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"
    } or ch == "\u2800"


invisible = st.sampled_from([ch for _, ch in REFUSED_CASES])
names = st.lists(st.characters() | invisible | st.sampled_from("abc "), max_size=12).map("".join)


@settings(max_examples=1000, deadline=None, database=None)
@given(names)
def test_no_accepted_name_contains_a_default_ignorable_or_format_character(name: str) -> None:
    cleaned = clean_name(name, DEFAULT_USERNAME, 32)
    if cleaned is None:
        assert any(_refused_character(ch) for ch in name.strip()) or len(name.strip()) > 32
        return
    for ch in cleaned:
        assert not _in_table(ord(ch)), f"U+{ord(ch):04X}"
        assert unicodedata.category(ch) != "Cf", f"U+{ord(ch):04X}"
        assert not _refused_character(ch), f"U+{ord(ch):04X}"
    assert is_allowed_in_name(cleaned)


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("jose\u0301", "jos\u00e9"),  # e + combining acute: é
        ("\u1112\u1161\u11ab", "\ud55c"),  # conjoining jamo: the syllable 한
        ("cafe\u0301 lounge", "caf\u00e9 lounge"),
        ("\u212b", "\u00c5"),  # ANGSTROM SIGN is canonically Å
    ],
)
def test_names_that_look_the_same_are_the_same_name(spelled: str, canonical: str) -> None:
    """Canonically equivalent spellings render identically: one name (and one room) in NFC."""
    assert clean_name(spelled, "d", 32) == clean_name(canonical, "d", 32) == canonical


def test_a_name_over_the_limit_once_normalized_is_refused() -> None:
    assert clean_name("\u0958" * 4, "d", 4) is None  # NFC writes each as two characters
    assert clean_name("\u0958" * 2, "d", 4) == "\u0915\u093c" * 2
