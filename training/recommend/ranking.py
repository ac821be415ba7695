"""Ranking maths: item and query vectors, plain similarity, MMR, one query per part, explicit garment coverage,
and why an item matched.

An item's indexed vector joins its unit image embedding and its unit label vector, weighted so the whole
is a unit vector: ``[a * e, b * l]`` with ``a² + b² = 1`` and ``a² = embed_weight``; a dot product is then
``embed_weight * cos(e) + (1 - embed_weight) * cos(l)``. A query is built the same way, from a post's or a
profile's embedding and label vector, so one index answers posts, profiles and parts alike.

Everything here is index-agnostic: a ``Search`` is any ``(vector, n) -> (ids, scores)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.recommend.vectors import FACETS, PART_REGION, PARTS, Layout

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
#: Share of the image embedding in a vector's similarity (the rest is the label vector's).
EMBED_WEIGHT = 0.5
#: Explicit coverage's weights of relevance and of style similarity against coverage, and the least share of a
#: category that makes an item count as one: chosen on the validation photos (docs/recommendations.md).
COVER_MU, COVER_TAU, COVER_FLOOR = 0.15, 0.05, 0.3


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x, dtype=np.float32), where=norm > 0).astype(np.float32)


def joint(embedding: np.ndarray, label: np.ndarray, embed_weight: float = EMBED_WEIGHT) -> np.ndarray:
    """``[..., C]`` embeddings and ``[..., L]`` label vectors → unit ``[..., C + L]`` vectors."""
    a, b = np.sqrt(embed_weight), np.sqrt(1.0 - embed_weight)
    return np.concatenate([a * _unit(np.asarray(embedding, np.float32)), b * _unit(np.asarray(label, np.float32))],
                          axis=-1).astype(np.float32)


@dataclass(frozen=True)
class PartQuery:
    part: str
    weight: float
    vector: np.ndarray


def part_queries(embedding: np.ndarray, label: np.ndarray, layout: Layout, *, min_weight: float = 0.4,
                 embed_weight: float = EMBED_WEIGHT, bands: bool = False) -> list[PartQuery]:
    """One query per body part the label shows (its top category there reaches ``min_weight``), strongest first.

    A part's query keeps only that part's categories, sub-categories and the attributes they allow, so a
    photo of a striped top with a leather bag asks once for striped tops and once for leather bags.
    ``bands`` takes the part's band of the embedding (``[R, C]`` rows) where it has one, else the whole photo.
    """
    weights = layout.part_weights(label)
    shown = sorted((p for p in PARTS if weights[p] >= min_weight), key=lambda p: (-weights[p], PARTS.index(p)))
    rows = np.atleast_2d(embedding)
    out = []
    for part in shown:
        row = rows[PART_REGION[part]] if bands and len(rows) > PART_REGION[part] else rows[0]
        out.append(PartQuery(part, weights[part], joint(row, label * layout.part_query_mask(part, label), embed_weight)))
    return out


def mmr(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int, *, lam: float = 0.7) -> list[int]:
    """Maximal marginal relevance over candidates: positions into ``ids`` of the k picked, in order.

    Each pick maximises ``lam * sim(query, i) - (1 - lam) * max sim(i, picked)``.
    """
    if len(ids) == 0:
        return []
    relevance = vectors @ query
    between = vectors @ vectors.T
    picked: list[int] = []
    closest = np.full(len(ids), -np.inf)
    for _ in range(min(k, len(ids))):
        score = lam * relevance - (1 - lam) * np.where(np.isfinite(closest), closest, 0.0)
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        closest = np.maximum(closest, between[best])
    return picked


def round_robin(lists: Sequence[tuple[str, Sequence[int]]], k: int, *, exclude: set[int] = frozenset()) -> list[tuple[int, str]]:
    """Merge ranked id lists one id per list in turn, skipping repeats: ``(id, the list's name)``, k at most."""
    seen, out = set(exclude), []
    cursors = [0] * len(lists)
    while len(out) < k and any(c < len(ids) for c, (_, ids) in zip(cursors, lists)):
        for n, (name, ids) in enumerate(lists):
            while cursors[n] < len(ids) and ids[cursors[n]] in seen:
                cursors[n] += 1
            if cursors[n] < len(ids) and len(out) < k:
                seen.add(ids[cursors[n]])
                out.append((ids[cursors[n]], name))
                cursors[n] += 1
    return out


def explain(query_label: np.ndarray, item_label: np.ndarray, layout: Layout, *, facet: str | None = None,
            top: int = 3) -> tuple[str, list[str]]:
    """Why an item matches a query: ``facet`` (the part a per-part query asked for) or else the facet (part
    or attribute family) where their labels overlap most, and the terms they share, strongest first;
    ``("look", [])`` when they share no term (the image did it)."""
    shared = np.minimum(query_label, item_label)
    terms = [layout.names[i] for i in np.argsort(-shared, kind="stable")[:top] if shared[i] > 0]
    if facet is not None:
        return facet, terms
    masses = layout.facet_matrix @ shared
    if masses.max(initial=0.0) <= 1e-6:
        return "look", []
    return FACETS[int(np.argmax(masses))], terms


def facets_matched(query_label: np.ndarray, item_label: np.ndarray, layout: Layout, *, floor: float = 0.1) -> set[str]:
    """Every facet in which the item shares a term the query shows at ``floor`` or more."""
    shared = np.minimum(query_label, item_label) >= floor
    return {f for f in FACETS if shared[layout.facet_masks[f]].any()}


def plain(query: np.ndarray, search: Search, k: int, *, exclude: set[int] = frozenset()) -> list[int]:
    """The k nearest ids (excluding ``exclude``)."""
    ids, _ = search(query, k + len(exclude))
    return [int(i) for i in ids if int(i) not in exclude][:k]


def by_parts(queries: Sequence[PartQuery], search: Search, k: int, *, exclude: set[int] = frozenset(),
             depth: int | None = None) -> list[tuple[int, str]]:
    """One search per part query, merged in turn (strongest part first): ``(id, part)``."""
    depth = depth or k + len(exclude)
    lists = [(q.part, [int(i) for i in search(q.vector, depth)[0]]) for q in queries]
    return round_robin(lists, k, exclude=set(exclude))


def covering(query: np.ndarray, parts: Sequence[PartQuery], search: Search, k: int, *,
             vectors_of: Callable[[np.ndarray], np.ndarray], shows: Callable[[str, np.ndarray], np.ndarray],
             lam: float = 0.7, depth: int = 50, exclude: set[int] = frozenset()) -> list[tuple[int, str | None]]:
    """One query per part, merged by explicit coverage (xQuAD): ``(id, the part it was picked for or None)``.

    Candidates are the top ``depth`` (k at least) of the whole query and of each part's query. Each pick maximises
    ``(1 - lam) * sim(query, i) + lam * sum_p w_p * sim(part_p, i) * prod_{j picked} (1 - sim(part_p, j))``:
    a part already served by a picked item counts less, so the list moves on to the next part, in
    proportion to how strongly the query shows each part (``w_p``). An item counts for a part only if its
    label shows that part (``shows(part, ids)``), so an empty part of the catalogue is not filled with noise.
    """
    depth = max(depth, k)  # k items whenever the index holds them
    found = dict.fromkeys(int(i) for q in (query, *(p.vector for p in parts))
                          for i in search(q, depth + len(exclude))[0] if int(i) not in exclude)
    ids = np.fromiter(found, dtype=np.int64, count=len(found))
    if len(ids) == 0:
        return []
    vectors = vectors_of(ids)
    relevance = np.maximum(0.0, vectors @ query)
    served = np.stack([np.maximum(0.0, vectors @ p.vector) * shows(p.part, ids) for p in parts]) if parts \
        else np.zeros((0, len(ids)))
    weights = np.array([p.weight for p in parts]) / max(1e-9, sum(p.weight for p in parts))
    left, picked, why = np.ones(len(parts)), [], []
    for _ in range(min(k, len(ids))):
        gain = (weights * left)[:, None] * served
        score = (1 - lam) * relevance + lam * gain.sum(axis=0)
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        why.append(parts[int(np.argmax(gain[:, best]))].part if len(parts) and gain[:, best].max() > 0 else None)
        left = left * (1.0 - served[:, best])
    return [(int(ids[b]), reason) for b, reason in zip(picked, why)]


def cover(query: np.ndarray, label: np.ndarray, parts: Sequence[PartQuery], search: Search, k: int, *,
          vectors_of: Callable[[np.ndarray], np.ndarray], labels_of: Callable[[np.ndarray], np.ndarray],
          layout: Layout, mu: float = COVER_MU, tau: float = COVER_TAU, floor: float = COVER_FLOOR,
          depth: int = 100, exclude: set[int] = frozenset()) -> list[tuple[int, str | None]]:
    """Explicit coverage of the garments the query wears: ``(id, the part it was picked for or None)``.

    The query (a post's or a profile's label vector) wears category ``c`` with probability ``q_c``; an item
    is one with probability ``L_ic`` (its label's share, from ``floor``). Each pick maximises
    ``mu * rel_i + gain_i + tau * sim(query, i)``: ``rel_i = max_c q_c L_ic`` is the chance the item is a
    garment the query wears, ``gain_i = max_c L_ic q_c prod_j (1 - q_j)`` over categories ``c`` not yet
    covered (``j``: those covered on ``c``'s body part) the chance it matches the query on a part the list
    has not matched yet, and the similarity keeps the style (image and attributes). A pick covers the
    category it gained on, so the list asks in turn for the next likeliest garment, hedging between the
    categories of a part the model cannot tell apart, until relevance outweighs what is left to cover.
    Candidates are the top ``depth`` (k at least) of the whole query and of each part's query.
    """
    depth = max(depth, k)  # k items whenever the index holds them
    found = dict.fromkeys(int(i) for q in (query, *(p.vector for p in parts))
                          for i in search(q, depth + len(exclude))[0] if int(i) not in exclude)
    ids = np.fromiter(found, dtype=np.int64, count=len(found))
    if len(ids) == 0:
        return []
    n_cat = len(layout.ontology.category_names)
    wears = np.asarray(label[:n_cat], dtype=np.float64)
    shares = labels_of(ids)[:, :n_cat].astype(np.float64)
    shares = np.where(shares >= floor, shares, 0.0)
    relevance = (shares * wears).max(axis=1)
    similarity = np.maximum(0.0, vectors_of(ids) @ query)
    covered, left = np.zeros(n_cat, dtype=bool), np.ones(len(PARTS))
    picked: list[int] = []
    why: list[str | None] = []
    for _ in range(min(k, len(ids))):
        open_share = wears * left[layout.category_part] * ~covered
        gains = shares * open_share
        score = mu * relevance + gains.max(axis=1) + tau * similarity
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        category = int(np.argmax(gains[best]))
        if gains[best, category] > 0:
            covered[category] = True
            left[layout.category_part[category]] *= 1.0 - wears[category]
            why.append(PARTS[layout.category_part[category]])
        else:
            why.append(None)
    return [(int(ids[b]), reason) for b, reason in zip(picked, why)]
