"""Parts of a kind a route module declares show up where people and agents read responses."""

from __future__ import annotations

from router.schemas import Response


def test_summaries_list_parts_of_new_kinds():
    from services.langchain_tool import summarize
    from services.runner import summary
    from tests.plugins.count_route import Count

    resp = Response(text="the circles (1 count).", raw_text="the circles [COUNT].", routes=["COUNT"],
                    parts=[Count(route="COUNT", phrase="circles", label="circles", count=3.0)])  # fmt: skip
    assert "1 count parts (circles: 1)" in summarize(resp)
    assert "[COUNT] count circles: label circles, count 3.0" in summary(resp)
