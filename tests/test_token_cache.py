"""The query token cache: hits, both bounds, isolation of the cached ids, and its use by the
service (the second request for a member skips tokenizing the query, same scores)."""

from __future__ import annotations

import asyncio

import pytest

from server.token_cache import TokenCache
from tests.test_service import ITEMS, QUERY, REF, make_app, serving


def counting_encoder():
    calls: list[str] = []

    def encode(q: str) -> list[int]:
        calls.append(q)
        return [ord(c) for c in q]

    return encode, calls


def test_hit_miss_and_instruction_in_key():
    enc, calls = counting_encoder()
    c = TokenCache(max_entries=8)
    assert c.get("abc", enc) == [97, 98, 99]
    assert c.get("abc", enc) == [97, 98, 99]
    assert calls == ["abc"] and (c.hits, c.misses) == (1, 1)
    c.get("abc", enc, instruction="rank for email")
    assert calls == ["abc", "abc"] and len(c) == 2


def test_bounded_by_entries_lru_order():
    enc, calls = counting_encoder()
    c = TokenCache(max_entries=2)
    c.get("a", enc)
    c.get("b", enc)
    c.get("a", enc)  # a is now the most recent
    c.get("c", enc)  # evicts b
    assert len(c) == 2
    c.get("a", enc)
    c.get("b", enc)
    assert calls == ["a", "b", "c", "b"]


def test_bounded_by_tokens():
    enc, _ = counting_encoder()
    c = TokenCache(max_entries=100, max_tokens=10)
    for q in ("aaaa", "bbbb", "cccc"):
        c.get(q, enc)
    assert c.tokens <= 10 and len(c) == 2
    c.get("x" * 11, enc)  # longer than the whole budget: returned, not kept
    assert c.tokens <= 10 and ("x" * 11, None) not in c._entries


def test_cached_ids_cannot_be_altered_by_a_caller():
    enc, _ = counting_encoder()
    c = TokenCache()
    c.get("ab", enc).append(0)
    ids = c.get("ab", enc)
    ids[0] = -1
    assert c.get("ab", enc) == [97, 98]


def test_bad_bounds():
    with pytest.raises(ValueError, match="max_entries"):
        TokenCache(max_entries=-1)


def test_service_reuses_the_query_tokens():
    app, engine = make_app()

    async def go():
        async with serving(app, engine) as client:
            cache = app.state.service.model_set.versions["fake:1"].query_tokens
            before = cache.hits
            for _ in range(2):
                r = await client.post(
                    "/v1/score", json={"query": QUERY, "items": ITEMS, "apply_softmax": True}
                )
                assert r.status_code == 200
                assert [row[0] for row in r.json()["scores"]] == pytest.approx(REF)
            assert cache.hits == before + 1

    asyncio.run(go())


def test_get_many_tokenizes_only_the_misses_in_one_call():
    batches: list[list[str]] = []

    def encode_batch(texts):
        batches.append(list(texts))
        return [[ord(c) for c in t] for t in texts]

    c = TokenCache()
    assert c.get_many(["ab", "c"], encode_batch) == [[97, 98], [99]]
    assert c.get_many(["c", "d", "ab"], encode_batch) == [[99], [100], [97, 98]]
    assert batches == [["ab", "c"], ["d"]]
    assert (c.hits, c.misses) == (2, 3)


def test_service_reuses_item_tokens():
    app, engine = make_app()

    async def go():
        async with serving(app, engine) as client:
            cache = app.state.service.model_set.versions["fake:1"].item_tokens
            r = await client.post(
                "/v1/score", json={"query": "another member", "items": ITEMS, "apply_softmax": True}
            )
            before = cache.hits
            r = await client.post(
                "/v1/score", json={"query": QUERY, "items": ITEMS[::-1], "apply_softmax": True}
            )
            assert r.status_code == 200
            assert [row[0] for row in r.json()["scores"]] == pytest.approx(REF[::-1])
            assert cache.hits == before + len(ITEMS)

    asyncio.run(go())
