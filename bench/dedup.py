"""Near-duplicate detection at 100,000 samples: recall, precision, wall time, speedup vs all-pairs.

Run: .venv/bin/python bench/dedup.py [--n 100000] [--shingles]

Builds a deterministic synthetic corpus of mixed Chinese and English customer-service style texts
(templates + random vocabulary, ~50-300 characters), plants near-duplicate pairs (small edits,
true shingle Jaccard >= 0.9) and hard negatives (edited further, true Jaccard in [0.75, 0.9)),
then runs `near_duplicate_pairs` at threshold 0.9. Ground truth for precision is the planted
positive set, so an accidental near-duplicate between two generated texts counts against us.

The baseline is what a naive script does: a Python double loop over all pairs computing Jaccard
on shingle sets, timed on a subset and extrapolated by n^2. `--shingles` also prints the
measurement behind the shingle size (separation of edited vs unrelated pairs for k = 2..7).
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasketch import MinHash

from engine.data import dedup

THRESHOLD = 0.9
SEED = 20260101

ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
    "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点"
    "从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原"
    "又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革"
    "位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强"
)
ZH_WORDS = [
    "订单",
    "发货",
    "退款",
    "快递",
    "会员",
    "积分",
    "优惠券",
    "售后",
    "客服",
    "地址",
    "发票",
    "物流",
    "商品",
    "尺码",
    "颜色",
    "价格",
    "库存",
    "包装",
    "保修",
    "安装",
]
EN_WORDS = [
    "order",
    "shipping",
    "refund",
    "account",
    "password",
    "delivery",
    "invoice",
    "warranty",
    "discount",
    "coupon",
    "member",
    "points",
    "size",
    "color",
    "price",
    "stock",
    "package",
    "install",
    "return",
    "exchange",
    "payment",
    "card",
    "address",
    "update",
    "cancel",
    "track",
    "status",
    "support",
    "agent",
    "product",
    "quality",
    "battery",
    "screen",
    "charger",
    "cable",
    "laptop",
    "phone",
    "tablet",
    "watch",
    "camera",
    "printer",
    "router",
    "speaker",
    "headset",
    "monitor",
    "keyboard",
    "mouse",
    "desk",
    "chair",
    "lamp",
]
ZH_TEMPLATES = [
    "请问{w1}的{w2}什么时候能处理好？{r}",
    "我想咨询一下关于{w1}和{w2}的问题，{r}",
    "{r}另外，{w1}可以改成{w2}吗？",
    "你好，我的{w1}一直没有{w2}，{r}麻烦帮我看一下。",
]
EN_TEMPLATES = [
    "Hi, can you tell me when my {w1} {w2} will be ready? {r}",
    "I have a question about the {w1} and the {w2}. {r}",
    "{r} Also, is it possible to change the {w1} to {w2}?",
    "Hello, my {w1} still shows no {w2} update, {r} please check.",
]


def _zh_filler(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ZH_CHARS) for _ in range(n)) + "。"


def _en_filler(rng: random.Random, n: int) -> str:
    words = [rng.choice(EN_WORDS) for _ in range(n)]
    words += [f"{rng.choice(EN_WORDS)}{rng.randrange(10, 9999)}"]
    return " ".join(words) + "."


def make_text(rng: random.Random) -> str:
    """One synthetic sample text: a template plus random vocabulary, 50-300 characters."""
    kind = rng.random()
    if kind < 0.45:  # Chinese
        filler = _zh_filler(rng, rng.randint(30, 150))
        text = rng.choice(ZH_TEMPLATES).format(w1=rng.choice(ZH_WORDS), w2=rng.choice(ZH_WORDS), r=filler)
    elif kind < 0.9:  # English
        filler = _en_filler(rng, rng.randint(6, 40))
        text = rng.choice(EN_TEMPLATES).format(w1=rng.choice(EN_WORDS), w2=rng.choice(EN_WORDS), r=filler)
    else:  # mixed: Chinese question with English product names and numbers
        text = (
            rng.choice(ZH_TEMPLATES).format(
                w1=rng.choice(EN_WORDS), w2=rng.choice(ZH_WORDS), r=_zh_filler(rng, rng.randint(20, 80))
            )
            + " "
            + _en_filler(rng, rng.randint(3, 15))
        )
    return text[:300]


def edit(rng: random.Random, text: str, n_edits: int) -> str:
    """Random single-character substitutions, insertions and deletions."""
    chars = list(text)
    for _ in range(n_edits):
        pos = rng.randrange(len(chars))
        op = rng.random()
        new = rng.choice(ZH_CHARS) if "\u4e00" <= chars[pos] <= "\u9fff" else rng.choice("abcdefghijklmnop ")
        if op < 0.5:
            chars[pos] = new
        elif op < 0.75:
            chars.insert(pos, new)
        elif len(chars) > 10:
            del chars[pos]
    return "".join(chars)


def planted(rng: random.Random, base: str, lo: float, hi: float) -> str | None:
    """An edited copy of `base` whose true Jaccard lies in [lo, hi), or None if none found."""
    for _ in range(12):
        budget = max(1, len(base) // 40) if hi > 1 else max(2, len(base) // 12)
        candidate = edit(rng, base, rng.randint(1, budget))
        if lo <= dedup.jaccard(base, candidate) < hi:
            return candidate
    return None


def build_corpus(n: int, n_pos: int, n_neg: int) -> tuple[list[str], set[tuple[int, int]], set[tuple[int, int]]]:
    rng = random.Random(SEED)
    texts = [make_text(rng) for _ in range(n - n_pos - n_neg)]
    positives: set[tuple[int, int]] = set()
    negatives: set[tuple[int, int]] = set()
    # Each base is used once, so two copies of one base never form an unplanted true pair.
    bases = iter(rng.sample(range(len(texts)), len(texts)))
    for want, lo, hi, into in ((n_pos, THRESHOLD, 1.01, positives), (n_neg, 0.75, THRESHOLD, negatives)):
        made = 0
        while made < want:
            base_idx = next(bases)
            copy = planted(rng, texts[base_idx], lo, hi)
            if copy is None:
                continue
            texts.append(copy)
            into.add((base_idx, len(texts) - 1))
            made += 1
    # Shuffle so planted copies are spread through the corpus, deterministically.
    order = list(range(len(texts)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    shuffled = [texts[old] for old in order]

    def remap(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
        return {tuple(sorted((where[a], where[b]))) for a, b in pairs}

    return shuffled, remap(positives), remap(negatives)


def naive_all_pairs(texts: list[str], k: int = dedup.SHINGLE_SIZE) -> list[tuple[int, int, float]]:
    """The seed's way: shingle sets, then every pair in a Python double loop."""
    sets = []
    for t in texts:
        t = t.lower()
        sets.append({t[i : i + k] for i in range(max(len(t) - k + 1, 1))})
    pairs = []
    for i in range(len(sets)):
        a = sets[i]
        for j in range(i + 1, len(sets)):
            b = sets[j]
            inter = len(a & b)
            sim = inter / (len(a) + len(b) - inter)
            if sim >= THRESHOLD:
                pairs.append((i, j, sim))
    return pairs


def shingle_study(texts: list[str], rng: random.Random) -> None:
    print("\nShingle size study (Jaccard at each k; 'edited' = 1 random edit per ~50 chars):")
    print(f"  {'k':>2} {'unrelated mean':>15} {'unrelated p99.9':>16} {'edited mean':>12} {'edited p1':>10}")
    sample = texts[:4000]
    edited = [edit(rng, t, max(1, len(t) // 50)) for t in sample[:2000]]
    for k in range(2, 8):
        h, o = dedup._shingles(sample, k)
        he, oe = dedup._shingles(edited, k)
        sets = [frozenset(h[o[i] : o[i + 1]].tolist()) for i in range(len(sample))]
        esets = [frozenset(he[oe[i] : oe[i + 1]].tolist()) for i in range(len(edited))]
        unrelated = sorted(dedup._set_jaccard(sets[i], sets[i + 2000]) for i in range(2000))
        close = sorted(dedup._set_jaccard(sets[i], esets[i]) for i in range(2000))
        print(
            f"  {k:>2} {sum(unrelated) / 2000:>15.3f} {unrelated[int(0.999 * 2000)]:>16.3f} "
            f"{sum(close) / 2000:>12.3f} {close[20]:>10.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=5_000)
    parser.add_argument("--hard-negatives", type=int, default=2_000)
    parser.add_argument("--naive-subset", type=int, default=5_000)
    parser.add_argument("--shingles", action="store_true", help="print the shingle size study")
    args = parser.parse_args()

    t0 = time.perf_counter()
    texts, positives, negatives = build_corpus(args.n, args.pairs, args.hard_negatives)
    build_s = time.perf_counter() - t0
    lengths = sorted(map(len, texts))
    zh = sum(any("\u4e00" <= c <= "\u9fff" for c in t) for t in texts)
    print(
        f"corpus: {len(texts)} texts ({zh} with Chinese), length p5/p50/p95 = "
        f"{lengths[len(lengths) // 20]}/{lengths[len(lengths) // 2]}/{lengths[len(lengths) * 19 // 20]} chars, "
        f"{len(positives)} planted near-duplicate pairs, {len(negatives)} hard negatives (built in {build_s:.1f}s)"
    )
    if args.shingles:
        shingle_study(texts, random.Random(SEED + 1))

    t0 = time.perf_counter()
    found = dedup.near_duplicate_pairs(texts, THRESHOLD)
    fast_s = time.perf_counter() - t0
    reported = {(i, j) for i, j, _ in found}
    recall = len(reported & positives) / len(positives)
    precision = len(reported & positives) / len(reported) if reported else 0.0
    neg_hits = len(reported & negatives)

    # Signatures through datasketch's own bulk API, on a subset, to justify the numpy path.
    sub = texts[:2000]
    h, o = dedup._shingles(sub)
    t1 = time.perf_counter()
    dedup._signatures(h, o)
    ours_sig = time.perf_counter() - t1
    t1 = time.perf_counter()
    MinHash.bulk(
        [[t[i : i + dedup.SHINGLE_SIZE].encode() for i in range(max(len(t) - dedup.SHINGLE_SIZE + 1, 1))] for t in sub],
        num_perm=dedup.NUM_PERM,
        seed=dedup.SEED,
    )
    ds_sig = time.perf_counter() - t1

    subset = texts[: args.naive_subset]
    t1 = time.perf_counter()
    naive_all_pairs(subset)
    naive_s = time.perf_counter() - t1
    naive_full = naive_s * (len(texts) / len(subset)) ** 2
    t1 = time.perf_counter()
    dedup.near_duplicate_pairs(subset, THRESHOLD)
    fast_subset_s = time.perf_counter() - t1
    speedup = naive_full / fast_s

    print()
    print(f"{'measure':<58} {'value':>12}")
    print(f"{'-' * 58} {'-' * 12}")
    rows = [
        (f"near_duplicate_pairs, {len(texts)} texts (s)", f"{fast_s:.1f}"),
        ("reported pairs", f"{len(reported)}"),
        ("recall on planted pairs", f"{recall:.4f}"),
        ("precision vs planted pairs", f"{precision:.4f}"),
        ("hard negatives reported", f"{neg_hits}"),
        (f"near_duplicate_pairs, {len(subset)} texts (s)", f"{fast_subset_s:.2f}"),
        (f"naive all-pairs loop, {len(subset)} texts (s)", f"{naive_s:.1f}"),
        (f"naive all-pairs, extrapolated n^2 to {len(texts)} (s)", f"{naive_full:.0f}"),
        ("signatures 2,000 texts: numpy (s)", f"{ours_sig:.3f}"),
        ("signatures 2,000 texts: datasketch MinHash.bulk (s)", f"{ds_sig:.3f}"),
    ]
    for name, value in rows:
        print(f"{name:<58} {value:>12}")
    print()
    targets = [
        ("dedup_recall", recall, ">=", 0.95, f"{recall:.3f}"),
        ("dedup_precision", precision, ">=", 0.95, f"{precision:.3f}"),
        ("dedup_100k_seconds", fast_s, "<=", 60, f"{fast_s:.1f}"),
        ("dedup_speedup_vs_all_pairs", speedup, ">=", 100, f"{speedup:.1f}"),
    ]
    for name, value, op, target, shown in targets:
        ok = value >= target if op == ">=" else value <= target
        print(f"TARGET {name} {shown} {op} {target} {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
