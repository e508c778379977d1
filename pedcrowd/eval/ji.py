"""CrowdDet's Jaccard index (JI) of CrowdHuman detections, vectorised over all images.

For each score threshold t in ``1e-1 * i`` (i = 0..9; ``0.30000000000000004``
and friends included), the detections with score > t; per image a
maximum-*weight* bipartite matching between them and the valid GT over the
pairs with IoU > 0.5 (weight = IoU; CrowdDet's blossom code, here per
connected component: stars and two-node sides in closed form, the rest by
``linear_sum_assignment``); k = matched pairs, n = detections less the
unmatched ones whose IoA (over their own area) with an ignore region is > 0.5,
m = valid GT less the unmatched ones whose IoA over *their own* area is > 0.5;
ratio k / (m + n - k + 1e-6) averaged over the images with m or n non-zero;
JI = the largest of the 10 averages. See :mod:`pedcrowd.eval.crowdhuman`; the
preparation and overlaps are :mod:`pedcrowd.eval.crowdhuman_matching`'s.

Shapes: D detections, M GT, E edges (detection, valid GT) with IoU > 0.5.
"""

from __future__ import annotations

import numpy as np

from pedcrowd.eval.crowdhuman_matching import EPS, THRESHOLD, Prepared, box_area, intersections

JI_THRESHOLDS = np.array([1e-1 * i for i in range(10)])  # CrowdDet's score_thr, float quirks included


def _components(ed: np.ndarray, eg: np.ndarray, n_det: int, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of a bipartite edge list.

    Returns:
        (comp [E] each edge's component, edges_in [C] edges per component,
        star [C] one detection or one GT holds every edge of the component).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(ed) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    graph = coo_matrix((np.ones(len(ed)), (ed, n_det + eg)), shape=(n_det + n_gt, n_det + n_gt))
    comp = connected_components(graph, directed=False)[1][ed].astype(np.int64)
    edges_in = np.bincount(comp)
    star = np.zeros(len(edges_in), bool)
    star[comp[np.bincount(ed, minlength=n_det)[ed] == edges_in[comp]]] = True
    star[comp[np.bincount(eg, minlength=n_gt)[eg] == edges_in[comp]]] = True
    return comp, edges_in, star


def _max_weight_matching(
    ed: np.ndarray, eg: np.ndarray, w: np.ndarray, n_det: int, n_gt: int, edge_id: np.ndarray, cache: dict
) -> np.ndarray:
    """A maximum-weight bipartite matching (weights > 0) of a graph of many small components.

    A star (one side a single node) takes its heaviest edge; every other
    component is one small ``linear_sum_assignment`` (maximise, non-edges 0):
    its best assignment's non-zero pairs are a heaviest matching.

    Thresholds only remove edges, so a component whose (first edge id, edge
    count) was already solved is the same component: ``cache`` maps that key
    to its matching, and is updated for the next call.

    Args:
        ed, eg, w: [E] edge endpoints (detection, GT index) and weights.
        edge_id: [E] increasing ids of the edges, stable across calls.

    Returns:
        [k] the ids (``edge_id``) of the matched edges.
    """
    if len(ed) == 0:
        return edge_id[:0]
    from scipy.optimize import linear_sum_assignment

    comp, edges_in, star = _components(ed, eg, n_det, n_gt)
    on_star = star[comp]
    idx = np.flatnonzero(on_star)
    idx = idx[np.lexsort((-w[idx], comp[idx]))]
    first = np.r_[True, comp[idx][1:] != comp[idx][:-1]] if len(idx) else np.zeros(0, bool)
    out = [edge_id[idx[first]]]
    rest = np.flatnonzero(~on_star)
    # Components with exactly two GT (or two detections): closed form.
    for pair_side, n_nodes in ((eg, n_gt), (ed, n_det)):
        other = ed if pair_side is eg else eg
        nodes = np.unique(comp[rest] * n_nodes + pair_side[rest]) // n_nodes
        two = (np.bincount(nodes, minlength=len(edges_in)) == 2)[comp[rest]]
        sel = rest[two]
        if len(sel):
            out.append(edge_id[sel[_two_node_side(comp[sel], pair_side[sel], other[sel], w[sel])]])
        rest = rest[~two]
    if len(rest):
        rest = rest[np.argsort(comp[rest], kind="stable")]
        c, d, g, wr = comp[rest], ed[rest], eg[rest], w[rest]
        bounds = np.flatnonzero(np.r_[True, c[1:] != c[:-1], True])
        # Local node numbers inside each component, from one sort per side.
        _, inv_d = np.unique(c * n_det + d, return_inverse=True)
        _, inv_g = np.unique(c * n_gt + g, return_inverse=True)
        start_d = np.minimum.reduceat(inv_d, bounds[:-1])
        start_g = np.minimum.reduceat(inv_g, bounds[:-1])
        size_d = np.maximum.reduceat(inv_d, bounds[:-1]) - start_d + 1
        size_g = np.maximum.reduceat(inv_g, bounds[:-1]) - start_g + 1
        which = np.repeat(np.arange(len(start_d)), np.diff(bounds))
        ld, lg = inv_d - start_d[which], inv_g - start_g[which]
        # Every component's dense weight matrix in one flat buffer, filled at
        # once, and beside it which edge each cell is (-1: none).
        cells = size_d * size_g
        offset = np.concatenate([[0], np.cumsum(cells)[:-1]])
        flat = np.zeros(int(cells.sum()))
        cell_edge = np.full(len(flat), -1, dtype=np.int64)
        at = offset[which] + ld * size_g[which] + lg
        flat[at] = wr
        cell_edge[at] = edge_id[rest]
        first_id = edge_id[rest[bounds[:-1]]].tolist()
        fresh, solved, got_r, got_c = {}, [], [], []
        for k in range(len(start_d)):
            key = (first_id[k], int(bounds[k + 1] - bounds[k]))
            ids = cache.get(key)
            if ids is not None:
                fresh[key] = ids
                out.append(ids)
                continue
            o = offset[k]
            r, col = linear_sum_assignment(flat[o : o + cells[k]].reshape(size_d[k], size_g[k]), maximize=True)
            solved.append(k)
            got_r.append(r)
            got_c.append(col)
        if solved:
            lens = [len(r) for r in got_r]
            ks = np.repeat(np.array(solved), lens)
            ids = cell_edge[offset[ks] + np.concatenate(got_r) * size_g[ks] + np.concatenate(got_c)]
            real = ids >= 0  # an assignment may pair nodes without an edge (weight 0)
            out.append(ids[real])
            # Each solved component's edges for the cache: slices (np.split is 10x slower).
            ends = np.cumsum(np.bincount(np.repeat(np.arange(len(solved)), lens)[real], minlength=len(solved))).tolist()
            kept, begin = ids[real], 0
            for k, end in zip(solved, ends, strict=True):
                fresh[(first_id[k], int(bounds[k + 1] - bounds[k]))] = kept[begin:end]
                begin = end
        cache.clear()
        cache.update(fresh)
    return np.concatenate(out)


def _two_node_side(comp: np.ndarray, pair: np.ndarray, other: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Heaviest matchings of components whose ``pair`` side has exactly two nodes.

    Every weight lies in (0.5, 1], so two edges always outweigh one: each
    component takes the best pair (u0, x), (u1, y) with x != y, from the best
    and second-best partner of each of its two ``pair`` nodes.

    Args:
        comp, pair, other, w: [E] component, the two-node side's node, the other node, weight.

    Returns:
        [k] positions (into the arguments) of the matched edges.
    """
    order = np.lexsort((-w, pair, comp))
    comp, pair, other, w = comp[order], pair[order], other[order], w[order]
    lead = np.r_[True, (comp[1:] != comp[:-1]) | (pair[1:] != pair[:-1])]
    starts = np.flatnonzero(lead)  # per (component, pair node), heaviest first; two per component
    second = np.where(np.r_[starts[1:], len(w)] - starts > 1, starts + 1, -1)
    s0, s1 = starts[0::2], starts[1::2]  # the two pair nodes of each component
    t0, t1 = second[0::2], second[1::2]
    wt = lambda i: np.where(i >= 0, w[i], -np.inf)  # noqa: E731
    clash = other[s0] == other[s1]
    alt_a = wt(s0) + wt(t1)  # u0 keeps its best, u1 takes its second
    alt_b = wt(t0) + wt(s1)
    use_a = clash & (alt_a >= alt_b)
    use_b = clash & ~use_a
    e0 = np.where(use_b, t0, s0)
    e1 = np.where(use_a, t1, s1)
    return order[np.concatenate([e0, e1])]


def _renumber(ids: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Ids in [0, n) -> (0, 1, ... in the same order [len(ids)], how many distinct); ``np.unique``'s
    inverse without its sort."""
    present = np.zeros(n, bool)
    present[ids] = True
    new = np.cumsum(present) - 1
    return new[ids], int(present.sum())


def _star_matchings(comp: np.ndarray, w: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matchings of star components at every score threshold at once.

    A star's matching is its heaviest active edge (ties: the earlier edge), and
    removing edges leaves a star. With the edges of each component heaviest
    first, edge e is the heaviest active one at the thresholds ``prev <= L < level[e]``,
    where ``prev`` is the largest level of the edges before it in its component
    (0 if none).

    Args:
        comp: [S] component of each edge; w: [S] weights; level: [S] the edge is
            active at thresholds ``L < level`` (its detection's score level).

    Returns:
        (edge [k], first [k], stop [k]): edge ``edge`` is matched at thresholds
        ``first <= L < stop``.
    """
    order = np.lexsort((-w, comp))
    c, lv = comp[order], level[order].astype(np.int64)
    span = int(lv.max(initial=0)) + 1
    running = np.maximum.accumulate(c * span + lv) - c * span  # the largest level so far, per component
    prev = np.r_[0, running[:-1]]
    prev[np.r_[True, c[1:] != c[:-1]]] = 0
    new = lv > prev
    return order[new], prev[new], lv[new]


def jaccard_index(prep: Prepared) -> tuple[float | None, list[float | None]]:
    """CrowdDet's ``compute_JI_with_ignore`` + ``gather`` over the 10 score thresholds.

    Counts k, n, m per (image, threshold) are built from matched edges: the
    components of the graph at the lowest threshold that are stars are solved
    for every threshold at once (:func:`_star_matchings`); the others, one
    threshold at a time (:func:`_max_weight_matching`; higher thresholds only
    remove edges, so they stay apart).

    Returns:
        (JI = the largest defined mean ratio or None, [10] mean ratio per threshold).
    """
    n_det, valid, n_img, n_t = len(prep.det_scores), ~prep.gt_ignore, prep.n_images, len(JI_THRESHOLDS)
    valid_idx, ign_idx = np.flatnonzero(valid), np.flatnonzero(prep.gt_ignore)
    gv, gi = prep.gt_boxes[valid_idx], prep.gt_boxes[ign_idx]
    position = np.cumsum(valid) - 1  # GT index -> index among the valid GT
    # Detection "level": active (score > t) at the thresholds t = JI_THRESHOLDS[L], L < level.
    level = np.searchsorted(JI_THRESHOLDS, prep.det_scores, side="left")
    pd, pg, iou, ioa = prep.overlaps()
    # Detection x valid GT: IoU > 0.5 edges between detections active at some threshold.
    on_valid = valid[pg]
    edge = on_valid & (iou > THRESHOLD) & (level[pd] > 0)
    ed, eg, ew = pd[edge], position[pg[edge]], iou[edge]
    # Detections that an ignore region covers (IoA over their own area; positive, as they intersect).
    det_cov = np.zeros(n_det, bool)
    det_cov[pd[~on_valid & (ioa > THRESHOLD)]] = True
    a, _, gi_inter = intersections(
        gv, prep.gt_img[valid_idx], gi, prep.gt_img[ign_idx], prep.n_images, min_ioa=THRESHOLD
    )
    gt_cov = np.zeros(len(valid_idx), bool)
    gt_cov[a[gi_inter / (box_area(gv, True)[a] + EPS) > THRESHOLD]] = True
    gv_img = prep.gt_img[valid_idx]

    # Matched edges as (edge, first threshold, stop threshold): stars at once, the rest per threshold.
    ld, n_d = _renumber(ed, n_det)
    lg, n_g = _renumber(eg, len(valid_idx))
    comp, edges_in, star = _components(ld, lg, n_d, n_g)
    on_star = np.flatnonzero(star[comp])
    got, first, stop = _star_matchings(comp[on_star], ew[on_star], level[ed[on_star]])
    events = [(on_star[got], first, stop)]
    other = np.flatnonzero(~star[comp])
    # Their nodes renumbered once: the per-threshold graphs are a fraction of the whole.
    od, n_od = _renumber(ld[other], n_d)
    og, n_og = _renumber(lg[other], n_g)
    other_level, other_comp = level[ed[other]], comp[other]
    # A component whose edges all outlive threshold t keeps its matching from
    # t - 1; only those that lose an edge at t are matched again.
    position_in_other = np.zeros(len(ed), np.int64)
    position_in_other[other] = np.arange(len(other))
    cache: dict = {}
    matched = np.zeros(len(other), bool)
    for t in range(n_t):
        redo = np.full(len(edges_in), t == 0)
        redo[other_comp[other_level == t]] = True  # (none at t = 0: those edges were left out)
        s = np.flatnonzero((other_level > t) & redo[other_comp])
        e = other[s]
        got = _max_weight_matching(od[s], og[s], ew[e], n_od, n_og, e, cache)
        matched &= ~redo[other_comp]
        matched[position_in_other[got]] = True
        hit = other[matched]
        events.append((hit, np.full(len(hit), t), np.full(len(hit), t + 1)))
    m_edge = np.concatenate([x[0] for x in events])
    m_first = np.concatenate([x[1] for x in events])
    m_stop = np.concatenate([x[2] for x in events])

    def per_image_threshold(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """[I, T] how many of the items (image img, counted at thresholds lo <= L < hi) fall in each cell."""
        diff = np.bincount(img * (n_t + 1) + lo, minlength=n_img * (n_t + 1))
        diff -= np.bincount(img * (n_t + 1) + hi, minlength=n_img * (n_t + 1))
        return np.cumsum(diff.reshape(n_img, n_t + 1), axis=1)[:, :n_t]

    det_img = prep.det_img
    k = per_image_threshold(det_img[ed[m_edge]], m_first, m_stop)
    zeros = np.zeros(n_det, np.int64)
    active = per_image_threshold(det_img, zeros, level)
    cov = np.flatnonzero(det_cov)
    cov_active = per_image_threshold(det_img[cov], zeros[cov], level[cov])
    on_cov = det_cov[ed[m_edge]]
    cov_matched = per_image_threshold(det_img[ed[m_edge][on_cov]], m_first[on_cov], m_stop[on_cov])
    n = active - cov_active + cov_matched  # less the unmatched detections an ignore region covers
    g_on_cov = gt_cov[eg[m_edge]]
    gcov = np.flatnonzero(gt_cov)
    gt_cov_all = per_image_threshold(gv_img[gcov], np.zeros(len(gcov), np.int64), np.full(len(gcov), n_t))
    gt_cov_matched = per_image_threshold(gv_img[eg[m_edge][g_on_cov]], m_first[g_on_cov], m_stop[g_on_cov])
    m = np.bincount(gv_img, minlength=n_img)[:, None] - gt_cov_all + gt_cov_matched
    ratio = k / (m + n - k + EPS)
    counted = ((m != 0) | (n != 0)).sum(axis=0)
    means: list[float | None] = [
        float(ratio[:, t].sum() / counted[t]) if counted[t] else None for t in range(n_t)
    ]
    defined = [v for v in means if v is not None]
    return (max(defined) if defined else None), means
