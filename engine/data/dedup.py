"""Near-duplicate detection: Jaccard similarity on character shingles, MinHash + LSH, exact check.

How it works, and why:

- Texts are normalised with `normalize_text` (NFKC, whitespace collapsed, case folded), then cut
  into overlapping character k-grams ("shingles"). Characters rather than words, so Chinese needs
  no word segmentation and mixed Chinese/English text is handled the same way. A text shorter
  than k is a single shingle (itself), so two equal short texts still have similarity 1.
- `SHINGLE_SIZE = 3`, chosen by measurement (`bench/dedup.py --shingles` prints the table). A
  single-character substitution removes up to k shingles and adds k, so at Jaccard 0.9 a text
  tolerates one substitution per ~19k characters: ~57 characters at k = 3 but ~95 at k = 5, and
  Chinese is dense (a 50-character Chinese answer is a paragraph). On the mixed corpus, texts with
  one random edit per 50 characters score mean 0.91 at k = 3 (0.86 at k = 5), so "98% the same"
  is a near-duplicate at the default threshold; unrelated texts stay far below it (mean 0.06,
  99.9th percentile 0.50, vs 0.68 at k = 2 where shared common bigrams start to matter).
  Verification is exact, so unrelated similarity only costs LSH candidates, never precision.
- Shingles are hashed with a fixed polynomial rolling hash over code points plus the
  MurmurHash3 finalizer (deterministic across runs and processes, unlike Python's `hash()`),
  vectorised with numpy over all texts at once.
- MinHash signatures use datasketch's "affine32" scheme (fmix32 pre-mix, then a*h + b mod 2^32
  with datasketch's own permutation parameters for `SEED`), computed in bulk with numpy: the
  values are bit-for-bit what `datasketch.MinHash(scheme="affine32").update_batch` would give for
  the same shingle hashes; `MinHash.bulk` (SHA-1 per shingle, a copy and update per text) measured
  ~3x slower (0.25 s vs 0.08 s per 2,000 texts; see the bench), ~10 s more at 100,000 texts.
- Banding (LSH) uses datasketch's `MinHashLSH` with (bands, rows) chosen so a pair at exactly the
  threshold becomes a candidate with probability >= 0.999. Candidates whose MinHash estimate is far
  below the threshold are dropped (vectorised); the rest are verified with the exact shingle
  Jaccard, so reported pairs are never false positives of the sketch.
"""

import threading
from collections.abc import Hashable, Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from engine.data.normalize import normalize_text

if TYPE_CHECKING:  # datasketch (and scipy under it) loads where samples are compared, not with every importer
    from datasketch import LeanMinHash, MinHashLSH

SHINGLE_SIZE = 3
NUM_PERM = 128
SEED = 1
_SCHEME = "affine32"
_ESTIMATE_MARGIN = 0.15  # candidates estimated below threshold - margin skip exact verification
_CHUNK_ELEMENTS = 1 << 22  # shingles x permutations per numpy step: bounds memory to ~16 MiB

_M64 = 0x9E3779B97F4A7C15  # odd multiplier of the polynomial shingle hash
_SHORT_TAG = np.uint64(0xA5A5_5A5A_C3C3_3C3C)  # marks texts shorter than k as their own shingle


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _shingles(texts: Sequence[str], k: int = SHINGLE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of all character k-grams of all (normalised) texts.

    Returns (hashes, offsets): text i's shingle hashes are hashes[offsets[i]:offsets[i+1]]
    (possibly repeated; every text has at least one)."""
    norms = [normalize_text(t) for t in texts]
    n = len(norms)
    lengths = np.fromiter(map(len, norms), dtype=np.int64, count=n)
    cps = np.frombuffer("".join(norms).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    total = len(cps)
    powers = [np.uint64(pow(_M64, j, 1 << 64)) for j in range(k)]
    with np.errstate(over="ignore"):
        # Polynomial hash of every window of k code points; windows crossing text boundaries are
        # computed too and simply never selected.
        windows = max(total - k + 1, 0)
        rolling = np.zeros(windows, dtype=np.uint64)
        for j in range(k):
            rolling += cps[j : j + windows] * powers[j]
        counts = np.maximum(lengths - k + 1, 1)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        starts = np.cumsum(lengths) - lengths
        long_docs = lengths >= k
        out = np.empty(int(offsets[-1]), dtype=np.uint64)
        if long_docs.any():
            lc = counts[long_docs]
            first = np.repeat(offsets[:-1][long_docs], lc)
            within = np.arange(int(lc.sum()), dtype=np.int64) - np.repeat(np.cumsum(lc) - lc, lc)
            src = np.repeat(starts[long_docs], lc) + within
            out[first + within] = rolling[src]
        for i in np.flatnonzero(~long_docs):
            h = np.uint64(0)
            for j, c in enumerate(cps[starts[i] : starts[i] + lengths[i]]):
                h += c * powers[j]
            out[offsets[i]] = h ^ _SHORT_TAG
        return _fmix64(out), offsets


@lru_cache(maxsize=8)
def _permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    # datasketch's own parameters, so our signatures are valid datasketch MinHash values.
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signatures (n_texts x num_perm, uint32), datasketch "affine32"-compatible."""
    a, b = _permutations(num_perm)
    h32 = _fmix32((hashes ^ (hashes >> np.uint64(32))).astype(np.uint32))
    n = len(offsets) - 1
    sigs = np.empty((n, num_perm), dtype=np.uint32)
    per_chunk = max(1, _CHUNK_ELEMENTS // num_perm)
    doc = 0
    with np.errstate(over="ignore"):
        while doc < n:
            # Whole texts per chunk, at least one, at most ~per_chunk shingles.
            end = int(np.searchsorted(offsets, offsets[doc] + per_chunk, side="right")) - 1
            end = min(max(end, doc + 1), n)
            lo, hi = offsets[doc], offsets[end]
            # Permutations x shingles, reduced along the rows: each text's shingles are contiguous in memory,
            # ~10x faster than reducing shingles x permutations down its columns.
            permuted = a[:, None] * h32[None, lo:hi] + b[:, None]
            sigs[doc:end] = np.minimum.reduceat(permuted, offsets[doc:end] - lo, axis=1).T
            doc = end
    return sigs


@lru_cache(maxsize=32)
def _lsh_params(threshold: float, num_perm: int = NUM_PERM, min_recall: float = 0.999) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) that still makes a pair at
    exactly `threshold` a candidate with probability >= min_recall."""
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= min_recall:
            return bands, rows
    return num_perm, 1


def _new_lsh(threshold: float) -> "MinHashLSH":
    from datasketch import MinHashLSH

    bands, rows = _lsh_params(round(threshold, 6))
    return MinHashLSH(threshold=threshold, num_perm=NUM_PERM, params=(max(bands, 2), rows))


def _lean(signature: np.ndarray) -> "LeanMinHash":
    from datasketch import LeanMinHash

    return LeanMinHash(seed=SEED, hashvalues=signature, scheme=_SCHEME)


def _set_jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _shingle_set(text: str) -> frozenset[int]:
    hashes, _ = _shingles([text])
    return frozenset(hashes.tolist())


def _string_shingles(text: str, k: int = SHINGLE_SIZE) -> frozenset[str]:
    norm = normalize_text(text)
    return frozenset(norm[i : i + k] for i in range(len(norm) - k + 1)) if len(norm) >= k else frozenset([norm])


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of the two texts' character shingle sets (after normalisation).

    Same shingles as the batch path, on strings rather than 64-bit hashes: equal results (barring
    a 2^-64 hash collision) and ~10x cheaper for one pair than the numpy path's per-call setup."""
    return _set_jaccard(_string_shingles(a), _string_shingles(b))


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def _plausible(sigs: np.ndarray, candidates: list[tuple[int, int]], threshold: float) -> list[tuple[int, int]]:
    """Candidates whose MinHash estimate is within `_ESTIMATE_MARGIN` of the threshold.

    Template-heavy data puts many pairs at Jaccard 0.4-0.7 into shared buckets; rejecting them on
    the vectorised estimate is much cheaper than building and intersecting their shingle sets. With
    128 permutations the estimate's standard deviation at J = 0.9 is 0.027, so a 0.15 margin (5.6
    sigma) loses a true pair with probability ~1e-8."""
    if not candidates:
        return []
    pairs = np.asarray(candidates, dtype=np.int64)
    keep = np.empty(len(pairs), dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // sigs.shape[1])
    for lo in range(0, len(pairs), step):
        chunk = pairs[lo : lo + step]
        estimate = (sigs[chunk[:, 0]] == sigs[chunk[:, 1]]).mean(axis=1)
        keep[lo : lo + step] = estimate >= threshold - _ESTIMATE_MARGIN
    return [(int(i), int(j)) for i, j in pairs[keep]]


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.9) -> list[tuple[int, int, float]]:
    """All pairs (i, j, similarity) with i < j and exact shingle Jaccard >= threshold, sorted."""
    _check_threshold(threshold)
    if len(texts) < 2:
        return []
    hashes, offsets = _shingles(texts)
    sigs = _signatures(hashes, offsets)
    lsh = _new_lsh(threshold)
    with lsh.insertion_session() as session:
        for i in range(len(texts)):
            session.insert(i, _lean(sigs[i]), check_duplication=False)
    # Candidates come from shared LSH buckets: walk each band's buckets instead of querying every
    # text, so each bucket is visited once.
    candidates: set[tuple[int, int]] = set()
    for table in lsh.hashtables:
        bucket_keys = table.keys()  # a datasketch storage, not a dict: no plain iteration
        for bucket_key in bucket_keys:
            members = table.get(bucket_key)
            if len(members) < 2:
                continue
            ordered = sorted(members)
            for x, i in enumerate(ordered):
                for j in ordered[x + 1 :]:
                    candidates.add((i, j))
    sets: dict[int, frozenset[int]] = {}

    def shingle_set(i: int) -> frozenset[int]:
        if i not in sets:
            sets[i] = frozenset(hashes[offsets[i] : offsets[i + 1]].tolist())
        return sets[i]

    pairs = []
    for i, j in _plausible(sigs, sorted(candidates), threshold):
        sim = _set_jaccard(shingle_set(i), shingle_set(j))
        if sim >= threshold:
            pairs.append((i, j, sim))
    return pairs


def near_duplicate_of(texts: Sequence[str], threshold: float = 0.9) -> list[int | None]:
    """For each text, the first earlier *kept* text it near-duplicates, or None if it is kept.

    Greedy in input order: a text is kept unless it is similar to an already kept text. If A~B and
    B~C but not A~C, B points at A and C is kept (its only match, B, was not kept)."""
    return first_kept(len(texts), near_duplicate_pairs(texts, threshold))


def first_kept(n: int, pairs: Iterable[tuple[int, int, float]]) -> list[int | None]:
    """`near_duplicate_of` from pairs (i, j, similarity), i < j < n, found however (at once or as texts arrived)."""
    earlier: dict[int, list[int]] = {}
    for i, j, _ in pairs:
        earlier.setdefault(j, []).append(i)
    result: list[int | None] = [None] * n
    for j in range(n):
        for i in sorted(earlier.get(j, ())):
            if result[i] is None:
                result[j] = i
                break
    return result


class NearDuplicateIndex:
    """An incremental index of texts for near-duplicate queries (e.g. a dataset's training split).

    Keeps the LSH bands and the normalised texts (to verify candidates exactly)."""

    def __init__(self, threshold: float = 0.9) -> None:
        _check_threshold(threshold)
        self.threshold = threshold
        self._lsh = _new_lsh(threshold)
        self._texts: dict[int, str] = {}
        self._sigs: dict[int, np.ndarray] = {}
        self._sets: dict[int, frozenset[int]] = {}
        self._order: dict[int, int] = {}  # key -> when it was added

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: int) -> bool:
        return key in self._texts

    def add(self, key: int, text: str) -> None:
        self.add_many([key], [text])

    def add_many(self, keys: Iterable[int], texts: Sequence[str]) -> None:
        self._add(list(keys), texts)

    def _add(self, keys: list[int], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Add the texts; their shingle hashes, offsets and signatures (None when there were none)."""
        if len(keys) != len(texts):
            raise ValueError(f"{len(keys)} keys but {len(texts)} texts")
        if len(set(keys)) != len(keys) or any(k in self._texts for k in keys):
            raise ValueError("keys must be unique within the index")
        if not keys:
            return None
        hashes, offsets = _shingles(texts)
        sigs = _signatures(hashes, offsets)
        with self._lsh.insertion_session() as session:
            for row, key in enumerate(keys):
                session.insert(key, _lean(sigs[row]), check_duplication=False)
                self._texts[key] = texts[row]
                self._sigs[key] = sigs[row]
                self._order[key] = len(self._order)
        return hashes, offsets, sigs

    def add_matching(self, keys: Iterable[int], texts: Sequence[str]) -> list[list[tuple[int, float]]]:
        """Add the texts as `add_many` does, and give for each the keys added before it (in an earlier call, or
        earlier in this one) whose verified similarity to it is >= threshold, most similar first: what `query_many`
        then `add_many`, and the pairs among the texts themselves, would give, from one pass over the texts."""
        keys = list(keys)
        added = self._add(keys, texts)
        if added is None:
            return []
        hashes, offsets, sigs = added
        results = []
        for row, key in enumerate(keys):
            mine = frozenset(hashes[offsets[row] : offsets[row + 1]].tolist())
            self._sets[key] = mine
            found = self._lsh.query(_lean(sigs[row]))
            before = [k for k in found if self._order[k] < self._order[key]]
            results.append(self._verified(sigs[row], mine, before))
        return results

    def query(self, text: str) -> list[tuple[int, float]]:
        """Keys whose verified similarity to `text` is >= threshold, most similar first."""
        return self.query_many([text])[0]

    def query_many(self, texts: Sequence[str]) -> list[list[tuple[int, float]]]:
        """`query` for many texts at once (signatures computed in bulk)."""
        if not texts:
            return []
        hashes, offsets = _shingles(texts)
        if not self._texts:
            return [[] for _ in texts]
        sigs = _signatures(hashes, offsets)
        results = []
        for row in range(len(texts)):
            found = self._lsh.query(_lean(sigs[row]))
            mine = frozenset(hashes[offsets[row] : offsets[row + 1]].tolist()) if found else frozenset()
            results.append(self._verified(sigs[row], mine, found))
        return results

    def _verified(self, sig: np.ndarray, mine: frozenset[int], found: Sequence[int]) -> list[tuple[int, float]]:
        """The keys among LSH candidates `found` at or above the threshold, most similar first."""
        if not found:
            return []
        # Same cheap estimate filter as the batch path before exact verification.
        estimate = (np.stack([self._sigs[k] for k in found]) == sig).mean(axis=1)
        hits = []
        for key, guess in zip(found, estimate, strict=True):
            if guess < self.threshold - _ESTIMATE_MARGIN:
                continue
            sim = _set_jaccard(mine, self._key_set(key))
            if sim >= self.threshold:
                hits.append((key, sim))
        hits.sort(key=lambda kv: (-kv[1], kv[0]))
        return hits

    def _key_set(self, key: int) -> frozenset[int]:
        # Cached: a key that matches once (a popular template) tends to match again.
        if key not in self._sets:
            self._sets[key] = _shingle_set(self._texts[key])
        return self._sets[key]


class ArrivingPairs:
    """Near-duplicate pairs among texts that arrive in batches (synthesis replies): each batch is compared with
    those before it and within itself as it arrives, while later requests are still out, so that a filter at the
    end only walks the pairs. Texts are named by any hashable key; safe to feed from several threads."""

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = threshold
        self._index = NearDuplicateIndex(threshold)
        self._keys: list[Hashable] = []  # the index's int key -> the caller's key
        self._pairs: list[tuple[Hashable, Hashable, float]] = []
        self._lock = threading.Lock()

    def add(self, keys: Sequence[Hashable], texts: Sequence[str]) -> None:
        """Compare `texts` with every text added before and with each other, then add them."""
        with self._lock:
            first = len(self._keys)
            self._keys += keys
            matches = self._index.add_matching(range(first, first + len(keys)), texts)
            for key, hits in zip(keys, matches, strict=True):
                self._pairs += [(self._keys[other], key, sim) for other, sim in hits]

    def pairs(self) -> list[tuple[Hashable, Hashable, float]]:
        """Every pair (earlier key, later key, similarity) of texts at or above the threshold."""
        with self._lock:
            return list(self._pairs)
