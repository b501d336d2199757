"""Compiled inner loops of the selectivity engine (numba).

Each kernel is one pass with one job, written as the plain loop it is; the
engine in :mod:`analysis.selectivity` composes them. Conventions shared by all:

* ``X`` is a block of activations, float32 (N images, B units), C order, as an
  activation table stores it; ``y`` is each image's *present-class index*
  (0..Kp-1, classes without images removed), so that ``argmax`` over that axis
  picks the lowest class index on ties, as docs/measures.md asks.
* Order keys: :func:`desc_key` maps a float32 to a uint32 whose ascending order
  is the float's descending order (``-0.0`` and ``0.0`` give the same key).
  Sorting ``desc_key(x) << 32 | label`` as uint64 (numpy's SIMD sort) gives the
  images from most to least active with their labels; equal activations have
  equal high words.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "class_stats",
    "top_candidates",
    "transpose",
    "order_keys",
    "precision_at_k",
    "signal_detection",
    "KEY_PAD",
]

#: Padding key: sorts after every real key.
KEY_PAD = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def desc_key(v):
    """uint32 key whose ascending order is the descending order of float32 ``v``."""
    bits = np.float32(v + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
    # ascending key: negative floats flip every bit, positive ones the sign bit
    neg = np.uint32(0) - (bits >> np.uint32(31))
    return ~(bits ^ (neg | np.uint32(0x80000000)))


@njit(cache=True)
def class_stats(X, y, n_present, n_chunks):
    """Per class: sum (float64), max and min; and the max of ``n_chunks`` row chunks.

    The chunk maxima give a cheap lower bound for the k-th largest activation:
    with ``n_chunks >= k``, at least k images reach the k-th largest chunk max.
    """
    n, b = X.shape
    sums = np.zeros((n_present, b))
    cmax = np.full((n_present, b), -np.inf, dtype=np.float32)
    cmin = np.full((n_present, b), np.inf, dtype=np.float32)
    chunk_max = np.full((n_chunks, b), -np.inf, dtype=np.float32)
    for i in range(n):
        c = y[i]
        r = (i * n_chunks) // n
        for j in range(b):
            v = X[i, j]
            sums[c, j] += v
            cmax[c, j] = max(cmax[c, j], v)
            cmin[c, j] = min(cmin[c, j], v)
            chunk_max[r, j] = max(chunk_max[r, j], v)
    return sums, cmax, cmin, chunk_max


@njit(cache=True)
def top_candidates(X, y, floor, above, n_present, cap):
    """One pass: the images above ``floor[j]`` as order keys, the ties at it, and counts.

    ``floor[j]`` is a value that at least k images reach, so every image at or
    above the k-th activation is either above the floor (kept as a key) or at
    it (counted per class: when fewer than k images are above the floor, the
    k-th activation *is* the floor, however many images tie there).

    Returns ``keys`` (B, cap) uint64 (padded with KEY_PAD), ``n_keys`` (B,) the
    number of images above the floor (it may exceed ``cap``: then the keys
    are incomplete and the caller sorts the whole column), ``at_floor`` (B,
    Kp) the images equal to the floor per class, and ``n_above`` (B,) the
    number of images strictly above ``above[j]`` (the top cluster size).
    """
    n, b = X.shape
    keys = np.full((b, cap), KEY_PAD, dtype=np.uint64)
    n_keys = np.zeros(b, dtype=np.int64)
    at_floor = np.zeros((b, n_present), dtype=np.int64)
    n_above = np.zeros(b, dtype=np.int64)
    for i in range(n):
        row = X[i]
        # a vectorisable sweep first; most rows hold no unit's candidate
        hit = False
        for j in range(b):
            v = row[j]
            n_above[j] += v > above[j]
            hit |= v >= floor[j]
        if not hit:
            continue
        c = y[i]
        for j in range(b):
            v = row[j]
            if v > floor[j]:
                m = n_keys[j]
                if m < cap:
                    keys[j, m] = (np.uint64(desc_key(v)) << np.uint64(32)) | np.uint64(c)
                n_keys[j] = m + 1
            elif v == floor[j]:
                at_floor[j, c] += 1
    return keys, n_keys, at_floor, n_above


@njit(cache=True)
def transpose(X):
    """X (N, B) as (B, N), in tiles of rows so that reads and writes stay in cache."""
    n, b = X.shape
    out = np.empty((b, n), dtype=X.dtype)
    tile = 128
    for i0 in range(0, n, tile):
        i1 = min(n, i0 + tile)
        for j in range(b):
            for i in range(i0, i1):
                out[j, i] = X[i, j]
    return out


@njit(cache=True)
def order_keys(Xt, y, cols, out):
    """Fill ``out[q]`` with the (unsorted) order keys of unit ``cols[q]`` of ``Xt`` (B, N)."""
    n = Xt.shape[1]
    for q in range(len(cols)):
        row = Xt[cols[q]]
        for i in range(n):
            out[q, i] = (np.uint64(desc_key(row[i])) << np.uint64(32)) | np.uint64(y[i])


@njit(cache=True)
def precision_at_k(keys, n_keys, at_floor, n_images, k):
    """Precision@k from sorted order keys and the images tied at a floor.

    Row j of ``keys`` holds, sorted, the ``n_keys[j]`` images above a floor
    value (all of them); ``at_floor[j]`` counts per class the images at the
    floor (pass zeros, with every image in ``keys``, when there is no floor).
    Ties at the k-th activation are shared out as expected counts under
    uniformly random tie-breaking. Returns (precision (B,), class (B,)).
    """
    b = keys.shape[0]
    n_present = at_floor.shape[1]
    k_eff = min(k, n_images)
    prec = np.empty(b)
    cls = np.empty(b, dtype=np.int64)
    greater = np.zeros(n_present)
    tied = np.zeros(n_present)
    for j in range(b):
        greater[:] = 0.0
        tied[:] = 0.0
        n_greater = 0
        n_tied = 0
        if n_keys[j] >= k_eff:  # the k-th activation is above the floor: all in keys
            kth = keys[j, k_eff - 1] >> np.uint64(32)
            for q in range(n_keys[j]):
                key = keys[j, q]
                hi = key >> np.uint64(32)
                lab = np.int64(key & np.uint64(0xFFFFFFFF))
                if hi < kth:  # strictly more active than the k-th
                    greater[lab] += 1.0
                    n_greater += 1
                elif hi == kth:
                    tied[lab] += 1.0
                    n_tied += 1
                else:
                    break
        else:  # the k-th activation is the floor itself
            for q in range(n_keys[j]):
                greater[np.int64(keys[j, q] & np.uint64(0xFFFFFFFF))] += 1.0
            n_greater = n_keys[j]
            for c in range(n_present):
                tied[c] = at_floor[j, c]
                n_tied += at_floor[j, c]
        slots = (k_eff - n_greater) / n_tied
        best = -1.0
        best_c = 0
        for c in range(n_present):
            e = greater[c] + tied[c] * slots
            if e > best:
                best = e
                best_c = c
        prec[j] = best / k_eff
        cls[j] = best_c
    return prec, cls


@njit(cache=True)
def signal_detection(keys, counts, top):
    """Signal-detection measures from fully sorted order keys (B, N).

    Thresholds are the distinct activations; images at or above a threshold
    are called positive. For every present class: max informedness (hit rate
    minus false-alarm rate, at least 0). For the class ``top[j]``: recall at
    precision >= 0.95 and == 1, average precision, max F1.

    Each class's measures can only improve at a threshold whose group of tied
    images holds one of its images, so each group is evaluated for the
    classes it holds.

    Returns ``informedness`` (B, Kp) and ``top_stats`` (B, 4): recall@0.95,
    recall@1, average precision, max F1.
    """
    b, n = keys.shape
    n_present = counts.shape[0]
    # hit - false alarm = tp / n_c - (P - tp) / (N - n_c) = num / (n_c (N - n_c)) with the
    # integer num = tp (N - n_c) - (P - tp) n_c: maximised exactly, divided once at the end
    # (correctly rounded, so equal informedness gives equal floats and ties go to the
    # lowest class). Without negatives (N == n_c) the false-alarm rate is 0: num = tp.
    w_tp = np.empty(n_present, dtype=np.int64)
    w_fp = np.empty(n_present, dtype=np.int64)
    for c in range(n_present):
        w_tp[c] = n - counts[c] if n > counts[c] else 1
        w_fp[c] = counts[c] if n > counts[c] else 0
    best = np.zeros((b, n_present), dtype=np.int64)
    top_stats = np.zeros((b, 4))
    tp = np.zeros(n_present, dtype=np.int64)
    inv_pos = 1.0 / counts
    mask = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    for j in range(b):
        tp[:] = 0
        row = best[j]
        t = top[j]
        n_t = counts[t]
        rec95 = 0.0
        rec100 = 0.0
        ap = 0.0
        f1 = 0.0
        i = 0
        while i < n:
            hi = keys[j, i] >> shift
            g = i + 1
            while g < n and (keys[j, g] >> shift) == hi:
                g += 1
            # images i..g-1 tie; g images lie at or above this threshold
            gained = 0
            for q in range(i, g):
                c = np.int64(keys[j, q] & mask)
                tp[c] += 1
                gained += c == t
            for q in range(i, g):
                c = np.int64(keys[j, q] & mask)
                v = tp[c] * w_tp[c] - (g - tp[c]) * w_fp[c]
                if v > row[c]:
                    row[c] = v
            if gained:
                tpt = tp[t]
                recall = tpt / n_t
                ap += gained * inv_pos[t] * (tpt / g)
                if 20 * tpt >= 19 * g:
                    rec95 = max(rec95, recall)
                if tpt == g:
                    rec100 = max(rec100, recall)
                f1 = max(f1, 2.0 * tpt / (g + n_t))
            i = g
        top_stats[j, 0] = rec95
        top_stats[j, 1] = rec100
        top_stats[j, 2] = ap
        top_stats[j, 3] = f1
    inform = np.empty((b, n_present))
    for c in range(n_present):
        den = np.float64(counts[c] * w_tp[c])
        for j in range(b):
            inform[j, c] = np.float64(best[j, c]) / den
    return inform, top_stats
