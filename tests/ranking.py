"""Comparing top-k search results whose scores come out of a BLAS: orders are compared up to float noise."""

from __future__ import annotations


def assert_top_k(hits, reference: dict[str, float], k: int, atol: float) -> None:
    """``hits`` (objects with ``id`` and ``score``) are a correct top ``k`` of ``reference`` (id -> exact score).

    Two matrix products over the same vectors (different chunking, another BLAS kernel, another CPU) agree to the
    last few bits only, so two scores within ``atol`` of each other may come out in either order, and either may
    take the last place. Checked: each hit's score is its id's reference score, the hits are in descending order,
    and nothing left out beats the last hit by more than ``atol``.
    """
    ids = [hit.id for hit in hits]
    assert len(ids) == len(set(ids)) == min(k, len(reference)), ids
    for hit in hits:
        assert abs(hit.score - reference[hit.id]) <= atol, (hit.id, hit.score, reference[hit.id])
    scores = [hit.score for hit in hits]
    assert all(a >= b - atol for a, b in zip(scores, scores[1:])), scores
    last = min(reference[i] for i in ids)
    beaten = {i: s for i, s in reference.items() if i not in ids and s > last + atol}
    assert not beaten, f"left out, though above the last hit ({last}): {beaten}"
