"""Links in chat text show exactly what they open: no bidi control or invisible character inside
a link, text from people isolated so that such characters cannot reorder what surrounds them,
and the punctuation of the prose around a URL (quotes, ellipses, CJK full stops, brackets)
left out of it. Each at desktop and at phone size (390x844), in Debian's Chromium against real
server processes."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.pages import chat_texts, join, say
from tests.support import ServerProcess

NewPage = Callable[..., Page]
Device = dict[str, object]

# Every bidi control and the invisible format characters a URL must never carry.
BIDI_AND_INVISIBLE = (
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    "\u200b\u200c\u200d\u2060\ufeff\u00ad"
)

# [link text, decoded href] of every link in a chat line.
LINKS_JS = "as => as.map(a => [a.textContent, decodeURI(a.href)])"


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def links_of_last_chat(page: Page) -> list[list[str]]:
    return list(chat_texts(page).last.locator("a").evaluate_all(LINKS_JS))


def test_a_link_never_shows_another_url_than_it_opens(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    reader = new_page(**device)
    writer = join(new_page(), server, "writer")
    join(reader, server, "reader")

    # The classic: RIGHT-TO-LEFT OVERRIDE makes ".../\u202efdp.exe" look like ".../exe.pdf".
    spoof = "invoice: https://files.example/\u202efdp.exe"
    say(writer, spoof)
    expect(chat_texts(reader)).to_have_count(1)
    line = chat_texts(reader).last
    expect(line).to_have_text(spoof)  # every character is still there, as text
    assert links_of_last_chat(reader) == [["https://files.example/", "https://files.example/"]]

    # Each control and invisible character ends a URL, wherever it stands in it.
    for n, ch in enumerate(BIDI_AND_INVISIBLE):
        say(writer, f"see https://x{n}.example/ab{ch}cd.txt ok")
        expect(chat_texts(reader)).to_have_count(n + 2)
        found = links_of_last_chat(reader)
        assert found == [[f"https://x{n}.example/ab", f"https://x{n}.example/ab"]], repr(ch)

    for page in (writer, reader):
        assert page.locator("#messages a").evaluate_all(
            r"""as => as.every(a => a.textContent === decodeURI(a.href)
                && !/[\p{Cf}]/u.test(a.textContent) && !/[\p{Cf}]/u.test(decodeURI(a.href)))"""
        )
    assert no_horizontal_scroll(reader)


def glyphs_left_to_right(page: Page, text_index: int) -> bool:
    """Whether the first character of the last chat's link `text_index` is drawn left of its
    last one (a link shown in reverse has them the other way round)."""
    return bool(
        chat_texts(page).last.locator("a").nth(text_index).evaluate(
            """a => {
                const node = a.firstChild, range = document.createRange();
                range.setStart(node, 0); range.setEnd(node, 1);
                const first = range.getBoundingClientRect();
                range.setStart(node, node.length - 1); range.setEnd(node, node.length);
                const last = range.getBoundingClientRect();
                return first.left < last.left;
            }"""
        )
    )


def test_bidi_controls_in_a_message_cannot_reorder_its_links_or_what_is_around_it(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    reader = new_page(**device)
    writer = join(new_page(), server, "writer")
    join(reader, server, "reader")

    # An override that is never closed, before a link: the link still reads left to right.
    say(writer, "\u202elook at https://a.example/abc and \u2067https://b.example/xyz")
    line = chat_texts(reader).last
    expect(line.locator("a")).to_have_count(2)
    assert links_of_last_chat(reader) == [
        ["https://a.example/abc", "https://a.example/abc"],
        ["https://b.example/xyz", "https://b.example/xyz"],
    ]
    assert glyphs_left_to_right(reader, 0)
    assert glyphs_left_to_right(reader, 1)

    # Message text and names are isolated, each in its own direction: what one says cannot
    # reorder the time, the sender, another line or the member list.
    styles = reader.evaluate(
        """() => [...document.querySelectorAll(
                '#messages .chat .text, #messages .chat .sender, #messages .chat .link, '
                + '#members .member-name')]
            .map(el => [el.className, getComputedStyle(el).unicodeBidi, el.dir])"""
    )
    assert styles, "nothing to check"
    for class_name, unicode_bidi, direction in styles:
        assert unicode_bidi == "isolate", class_name
        assert direction == ("ltr" if class_name == "link" else "auto"), class_name
    # A message that only overrides: the sender's name is still drawn before its text.
    say(writer, "\u202eevil")
    expect(chat_texts(reader)).to_have_count(2)
    sender = reader.locator("#messages .chat .sender").last.bounding_box()
    text = chat_texts(reader).last.bounding_box()
    assert sender is not None and text is not None
    assert sender["x"] + sender["width"] <= text["x"] or sender["y"] + sender["height"] <= text["y"]
    assert no_horizontal_scroll(reader)


def test_closing_punctuation_and_quotes_around_a_url_stay_out_of_the_link(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    reader = new_page(**device)
    writer = join(new_page(), server, "writer")
    join(reader, server, "reader")

    cases = [
        ("\u201chttps://a.example/quoted\u201d", "https://a.example/quoted"),
        ("\u201ehttps://a.example/german\u201c", "https://a.example/german"),
        ("\u00abhttps://a.example/french\u00bb", "https://a.example/french"),
        ("'https://a.example/single'", "https://a.example/single"),
        ("\u2018https://a.example/curly\u2019", "https://a.example/curly"),
        ("https://a.example/wait\u2026", "https://a.example/wait"),
        ("https://a.example/jp\u3002", "https://a.example/jp"),
        ("https://a.example/list\u3001", "https://a.example/list"),
        ("\u300chttps://a.example/kagi\u300d", "https://a.example/kagi"),
        ("\uff08https://a.example/wide\uff09", "https://a.example/wide"),
        ("{https://a.example/brace}", "https://a.example/brace"),
        ("[https://a.example/square]", "https://a.example/square"),
        ("https://a.example/really?!", "https://a.example/really"),
        ("https://a.example/end;", "https://a.example/end"),
        # Balanced brackets belong to the URL, as before.
        (
            "https://en.wikipedia.org/wiki/Mercury_(disambiguation).",
            "https://en.wikipedia.org/wiki/Mercury_(disambiguation)",
        ),
        ("(https://a.example/a_(b))", "https://a.example/a_(b)"),
        ("https://a.example/t/{id}", "https://a.example/t/{id}"),
        ("https://a.example/dir/", "https://a.example/dir/"),
    ]
    text = " ".join(prose for prose, _ in cases)
    say(writer, text)
    expect(chat_texts(reader)).to_have_count(1)
    for page in (writer, reader):
        expect(chat_texts(page).last).to_have_text(text)  # every character is still shown
        found = links_of_last_chat(page)
        assert found == [[url, url] for _, url in cases]
    assert no_horizontal_scroll(reader)
