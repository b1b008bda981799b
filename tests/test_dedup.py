"""Near-duplicate detection: shingle Jaccard, MinHash/LSH batch pairs, first-kept semantics, index."""

import random

import numpy as np
import pytest
from datasketch import MinHash

from engine.data import dedup
from engine.data.dedup import ArrivingPairs, NearDuplicateIndex, jaccard, near_duplicate_of, near_duplicate_pairs
from engine.data.normalize import normalize_text

ZH = (
    "您好，您的订单已经发货，预计三到五个工作日送达，请留意快递员的电话。"
    "如果收到的商品有破损或者与描述不符，可以在七天内申请退换货，运费由我们承担，如有问题请随时联系在线客服。"
)
EN = (
    "Your order has shipped and should arrive within three to five business days; "
    "please keep your phone nearby for the courier and contact support if anything goes wrong."
)


def test_normalize_folds_width_whitespace_and_case() -> None:
    assert normalize_text("ＨＥＬＬＯ　Ｗｏｒｌｄ１２３") == "hello world123"
    assert normalize_text("  你好，\n\t世界！ ") == "你好, 世界!"
    assert normalize_text("Straße") == "strasse"


def test_jaccard_identical_unrelated_and_normalised() -> None:
    assert jaccard(ZH, ZH) == 1.0
    assert jaccard(EN, EN.upper()) == 1.0  # case folded
    assert jaccard("ＡＢＣＤＥＦＧ", "abcdefg") == 1.0  # full-width folded
    assert jaccard(ZH, EN) == 0.0
    assert jaccard("", "") == 1.0
    assert jaccard("ab", "ab") == 1.0  # shorter than a shingle: the text is its own shingle
    assert jaccard("ab", "abc") == 0.0


def test_one_character_edit_stays_above_threshold_in_both_languages() -> None:
    zh_edit = ZH.replace("三到五", "三至五")
    en_edit = EN.replace("three", "thre")
    assert 0.9 <= jaccard(ZH, zh_edit) < 1.0
    assert 0.9 <= jaccard(EN, en_edit) < 1.0
    assert jaccard(ZH, ZH[: len(ZH) // 2]) < 0.9


def test_signatures_match_datasketch_minhash() -> None:
    # Our vectorised signatures are exactly datasketch's "affine32" MinHash of the shingle hashes.
    texts = [ZH, EN, "hi", ""]
    hashes, offsets = dedup._shingles(texts)
    sigs = dedup._signatures(hashes, offsets)
    for i in range(len(texts)):
        seg = hashes[offsets[i] : offsets[i + 1]]
        m = MinHash(num_perm=dedup.NUM_PERM, seed=dedup.SEED, scheme="affine32", hashfunc=int)
        m.update_batch((seg ^ (seg >> np.uint64(32))).astype(np.uint32).tolist())
        assert np.array_equal(m.hashvalues, sigs[i])


def test_shingle_hashes_are_deterministic() -> None:
    a, _ = dedup._shingles([ZH, EN])
    b, _ = dedup._shingles([ZH, EN])
    assert np.array_equal(a, b)
    assert int(a[0]) == int(dedup._shingles([ZH])[0][0])  # independent of batch composition


def test_near_duplicate_pairs_finds_planted_pairs_only() -> None:
    rng = random.Random(7)
    vocab = "订单发货退款快递会员积分优惠券售后客服地址发票物流商品尺码颜色价格库存包装"
    texts = ["".join(rng.choice(vocab) for _ in range(120)) for _ in range(150)]
    texts += [" ".join(rng.choice(EN.split()) for _ in range(30)) for _ in range(150)]
    texts.append(texts[3][:60] + "改" + texts[3][61:])  # 300: near-dup of 3 (Chinese)
    texts.append(texts[200].upper())  # 301: exact dup of 200 after normalisation (English)
    pairs = near_duplicate_pairs(texts, 0.9)
    assert [(i, j) for i, j, _ in pairs] == [(3, 300), (200, 301)]
    assert pairs[1][2] == 1.0
    assert all(sim >= 0.9 for *_, sim in pairs)


def test_pairs_found_as_batches_arrive_are_the_pairs_found_at_once() -> None:
    """Synthesis compares each reply's samples with the replies before it as they arrive, in any order: the pairs
    are the ones a pass over all the texts at the end finds, within a batch and across batches alike."""
    rng = random.Random(11)
    vocab = "订单发货退款快递会员积分优惠券售后客服地址发票物流商品尺码颜色价格库存包装"
    texts = ["".join(rng.choice(vocab) for _ in range(80)) for _ in range(60)]
    for source, target in ((3, 17), (40, 41), (17, 55)):  # across batches, within one, a chain
        texts[target] = texts[source][:40] + "改" + texts[source][41:]
    batches = [list(range(start, start + 10)) for start in range(0, 60, 10)]
    rng.shuffle(batches)
    arriving = ArrivingPairs(0.9)
    for batch in batches:
        arriving.add(batch, [texts[i] for i in batch])
    found = sorted((min(a, b), max(a, b), sim) for a, b, sim in arriving.pairs())
    assert [(i, j) for i, j, _ in found] == [(3, 17), (3, 55), (17, 55), (40, 41)]
    assert found == near_duplicate_pairs(texts, 0.9)


def test_near_duplicate_of_keeps_the_first_of_each_group() -> None:
    a = EN
    a2 = EN.replace("three", "thre")
    b = ZH
    b2 = ZH.replace("三到五", "三至五")
    texts = [a, b, a2, b2, a, "something else entirely"]
    assert near_duplicate_of(texts) == [None, None, 0, 1, 0, None]


def test_near_duplicate_of_points_only_at_kept_texts() -> None:
    # A~B, B~C, but not A~C: B is dropped (dup of A), so C is kept rather than pointing at B.
    a = "abcdefghijklmnopqrstuvwxyz0123456789" * 2
    b = a[:30] + "#" + a[31:]
    c = b[:60] + "@" + b[61:]
    assert jaccard(a, b) >= 0.9 and jaccard(b, c) >= 0.9 and jaccard(a, c) < 0.9
    assert near_duplicate_of([a, b, c]) == [None, 0, None]


def test_threshold_is_respected_and_validated() -> None:
    edited = EN.replace("three", "3")
    sim = jaccard(EN, edited)
    assert near_duplicate_pairs([EN, edited], threshold=sim - 0.01)
    assert not near_duplicate_pairs([EN, edited], threshold=min(sim + 0.01, 1.0))
    with pytest.raises(ValueError):
        near_duplicate_pairs([EN], threshold=0)


def test_index_query_returns_verified_matches_best_first() -> None:
    index = NearDuplicateIndex(threshold=0.9)
    index.add_many([10, 11, 12], [EN, ZH, "完全不同的一句话，讲的是天气和旅行计划。"])
    index.add(13, EN.replace("three", "thre"))
    assert len(index) == 4 and 13 in index
    hits = index.query(EN)
    assert [k for k, _ in hits] == [10, 13]
    assert hits[0][1] == 1.0 > hits[1][1] >= 0.9
    assert index.query(ZH.replace("三到五", "三至五"))[0][0] == 11
    assert index.query("nothing like the others at all, really, not even close") == []
    with pytest.raises(ValueError):
        index.add(10, "duplicate key")


def test_empty_inputs() -> None:
    assert near_duplicate_pairs([]) == []
    assert near_duplicate_of([]) == []
    assert NearDuplicateIndex().query(EN) == []


def test_pair_jaccard_equals_the_batch_path() -> None:
    edited = ZH.replace("三到五", "三至五")
    (_, _, batch_sim), *_ = near_duplicate_pairs([ZH, edited], threshold=0.5)
    assert jaccard(ZH, edited) == batch_sim
    assert jaccard("ab", "ab") == dedup._set_jaccard(dedup._shingle_set("ab"), dedup._shingle_set("AB"))
