import pytest

from clo.data.segment import Piece, reassemble, segment_text, segments_of

MARKDOWN = """# How to sort a list

Use `sorted(xs)` for a new list, or `xs.sort()` in place. Both are stable!

```python
xs = [3, 1, 2]
print(sorted(xs))  # [1, 2, 3]
```

1. First, make the list.
   - Nested *point* here.
> A quote.
| Name | Meaning |
|---|---|
| `key` | the sort key |
~~~
raw ~~~ block, "unchanged"
~~~
Done."""


def _upper(s: str) -> str:
    return s.upper()


@pytest.mark.parametrize("text", [
    MARKDOWN, "", "   ", "\n\n", "plain", "Ends with newline\n", "```\nunclosed code fence\nstill code",
    "Tabs\tand  double  spaces .", "第一句话。第二句话！第三句？", "Inline ``double `tick` code`` here",
    "  indented line\n\n\n  another   ",
])
def test_round_trip_is_exact(text):
    pieces = segment_text(text, max_tokens=8)
    assert "".join(p.text for p in pieces) == text
    assert reassemble(pieces, lambda s: s) == text


def test_code_and_markers_verbatim_segments_in_order():
    pieces = segment_text(MARKDOWN, max_tokens=200)
    assert segments_of(pieces) == [
        "How to sort a list", "Use", "for a new list, or", "in place. Both are stable!",
        "First, make the list.", "Nested *point* here.", "A quote.", "Name", "Meaning", "the sort key", "Done.",
    ]
    out = reassemble(pieces, _upper)
    assert out == MARKDOWN.replace("How to sort a list", "HOW TO SORT A LIST").replace(
        "Use `sorted(xs)` for a new list, or `xs.sort()` in place. Both are stable!",
        "USE `sorted(xs)` FOR A NEW LIST, OR `xs.sort()` IN PLACE. BOTH ARE STABLE!").replace(
        "First, make the list.", "FIRST, MAKE THE LIST.").replace("Nested *point* here.", "NESTED *POINT* HERE.").replace(
        "A quote.", "A QUOTE.").replace("| Name | Meaning |", "| NAME | MEANING |").replace(
        "| `key` | the sort key |", "| `key` | THE SORT KEY |").replace("Done.", "DONE.")
    # The code blocks are byte-identical.
    assert "```python\nxs = [3, 1, 2]\nprint(sorted(xs))  # [1, 2, 3]\n```" in out
    assert '~~~\nraw ~~~ block, "unchanged"\n~~~' in out


def test_long_paragraph_splits_into_sentences_then_words():
    text = "One two three. Four five six seven! Eight nine ten eleven twelve thirteen fourteen fifteen."
    count = lambda s: len(s.split())
    pieces = segment_text(text, max_tokens=4, count_tokens=count)
    assert segments_of(pieces) == ["One two three.", "Four five six seven!", "Eight nine ten eleven",
                                   "twelve thirteen fourteen fifteen."]
    assert all(count(s) <= 4 for s in segments_of(pieces))
    assert "".join(p.text for p in pieces) == text
    # Under the limit: the paragraph stays one segment.
    assert segments_of(segment_text(text, max_tokens=100, count_tokens=count)) == [text]


def test_cjk_sentences_split_without_spaces():
    text = "第一句话。第二句话！第三句？"
    assert segments_of(segment_text(text, max_tokens=5)) == ["第一句话。", "第二句话！", "第三句？"]


def test_letterless_pieces_are_not_translated():
    pieces = segment_text("42\n---\n3.14 + 2 = 5.14\nhttps://x.y/z")
    assert segments_of(pieces) == ["https://x.y/z"]  # letters: sent; numbers alone: kept
    assert pieces[0] == Piece("42\n---\n3.14 + 2 = 5.14\n", False)


def test_translations_with_newlines_are_flattened():
    pieces = segment_text("- item one\n- item two")
    assert reassemble(pieces, {"item one": " Punkt\neins ", "item two": "Punkt zwei"}) == "- Punkt eins\n- Punkt zwei"


def test_bad_limit():
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        segment_text("x", max_tokens=0)
