"""Usernames and room names: the defaults and the one rule every name passes.

A name comes from a client's ``join`` or from a token's claims (server/auth.py); both go through
``clean_name``, so no path lets a name through that the other would refuse.

The rule (docs/protocol.md, docs/security.md): after trimming, at most ``max_length`` characters
and none that is invisible or changes how the text around it is shown, so that no two names that
look the same on screen are different strings (canonically equivalent spellings are made one by
NFC normalization, and every run of spaces, of whatever kind, one U+0020). Refused:

* the Unicode general categories Cc (controls), Cf (format: bidi marks and overrides, zero-width
  joiners and spaces, soft hyphen, tags, interlinear annotation...), Zl and Zp (line and
  paragraph separators), Cs (lone surrogates, which a token's JSON can carry), Co (private use:
  no agreed glyph, a different one in every font) and Cn (unassigned in the server's Unicode
  database, ``unicodedata.unidata_version``: nobody can know what it will become; Unicode 15 made
  some of them format controls). Cn also covers the noncharacters (U+FDD0..U+FDEF, U+xFFFE/F);
* every Default_Ignorable_Code_Point (the table below), which adds to Cf the invisible
  characters of other categories: Hangul fillers, variation selectors, the combining grapheme
  joiner, Mongolian free variation selectors, Khmer inherent vowels;
* U+2800 BRAILLE PATTERN BLANK, which renders as nothing and is the usual "invisible name".

So emoji written with a variation selector or a joiner (U+2764 U+FE0F, family and flag ZWJ
sequences) are refused too; plain emoji (U+1F642) are fine. Look-alike letters of different
scripts (Latin a, Cyrillic a) are not this rule's business.
"""

from __future__ import annotations

import re
import unicodedata

DEFAULT_ROOM = "general"
DEFAULT_USERNAME = "Anonymous"

# Default_Ignorable_Code_Point from DerivedCoreProperties.txt, Unicode 14.0.0 (the version of
# Python 3.11's unicodedata), range by range as the file lists them, with their categories.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # Cf SOFT HYPHEN
    (0x034F, 0x034F),  # Mn COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # Cf ARABIC LETTER MARK
    (0x115F, 0x1160),  # Lo HANGUL CHOSEONG FILLER, HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # Mn KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180D),  # Mn MONGOLIAN FREE VARIATION SELECTOR ONE..THREE
    (0x180E, 0x180E),  # Cf MONGOLIAN VOWEL SEPARATOR
    (0x180F, 0x180F),  # Mn MONGOLIAN FREE VARIATION SELECTOR FOUR
    (0x200B, 0x200F),  # Cf ZERO WIDTH SPACE, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),  # Cf LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x2064),  # Cf WORD JOINER..INVISIBLE PLUS
    (0x2065, 0x2065),  # Cn <reserved>
    (0x2066, 0x206F),  # Cf LEFT-TO-RIGHT ISOLATE..NOMINAL DIGIT SHAPES
    (0x3164, 0x3164),  # Lo HANGUL FILLER
    (0xFE00, 0xFE0F),  # Mn VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),  # Cf ZERO WIDTH NO-BREAK SPACE (BOM)
    (0xFFA0, 0xFFA0),  # Lo HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # Cn <reserved>
    (0x1BCA0, 0x1BCA3),  # Cf SHORTHAND FORMAT LETTER OVERLAP..UP STEP
    (0x1D173, 0x1D17A),  # Cf MUSICAL SYMBOL BEGIN BEAM..END PHRASE
    (0xE0000, 0xE0000),  # Cn <reserved>
    (0xE0001, 0xE0001),  # Cf LANGUAGE TAG
    (0xE0002, 0xE001F),  # Cn <reserved>
    (0xE0020, 0xE007F),  # Cf TAG SPACE..CANCEL TAG
    (0xE0080, 0xE00FF),  # Cn <reserved>
    (0xE0100, 0xE01EF),  # Mn VARIATION SELECTOR-17..256
    (0xE01F0, 0xE0FFF),  # Cn <reserved>
)
BLANK_LOOKING = (0x2800,)  # So BRAILLE PATTERN BLANK
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

_ASCII_CONTROL = re.compile("[\x00-\x1f\x7f]")
_INVISIBLE = re.compile(
    "["
    + "".join(f"{chr(low)}-{chr(high)}" for low, high in DEFAULT_IGNORABLE)
    + "".join(chr(code) for code in BLANK_LOOKING)
    + "]"
)


def is_allowed_in_name(text: str) -> bool:
    """True when `text` has no character the name rule refuses (see the module docstring)."""
    if text.isascii():  # the common case: one C-speed scan, no per-character Python
        return _ASCII_CONTROL.search(text) is None
    if _INVISIBLE.search(text):
        return False
    category = unicodedata.category
    return all(category(ch) not in REFUSED_CATEGORIES for ch in text)


def clean_name(value: str | None, default: str, max_length: int) -> str | None:
    """The name to use, or None when it is invalid (too long, or a character the rule refuses).

    Missing, blank and whitespace-only names mean `default`, as in the seed; surrounding
    whitespace is trimmed, and each run of spaces inside (U+0020, no-break, thin, ideographic:
    every space separator) becomes one U+0020, since a page shows them all as one space. A
    non-ASCII name is put in Unicode NFC first, so that canonically
    equivalent spellings (``é`` as one character or as ``e`` and a combining accent; a Hangul
    syllable or its conjoining jamo), which look the same, are the same name and the same room.
    """
    if value is None:
        return default
    value = value.strip()
    if not value:
        return default
    if len(value) > max_length:
        return None
    if value.isascii():  # inlined: this runs for every join
        if _ASCII_CONTROL.search(value):
            return None
        return " ".join(value.split()) if "  " in value else value
    value = unicodedata.normalize("NFC", value)
    if len(value) > max_length:  # NFC never lengthens, except a few compatibility cases
        return None
    if not is_allowed_in_name(value):
        return None
    return " ".join(value.split())  # every run of spaces (no-break, thin...) is one space
