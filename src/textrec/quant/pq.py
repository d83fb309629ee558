"""VQ-Rec item quantiser: OPQ rotation -> one spherical coarse centroid -> product quantisation.

Reference: VQ-Rec ``pq.py`` (REFERENCE_NOTES section 2): ``faiss.index_factory(d, "OPQ32,IVF1,PQ32x8",
METRIC_INNER_PRODUCT)`` trained on the training-split ("strict") items' text vectors. The OPQ rotation
(faiss defaults: 50 iterations, <= 65,536 training points) is learnt first; the IVF1 coarse quantizer
is inner-product k-means with one centroid, i.e. the L2-normalised mean of the rotated vectors; PQ
(k-means, 25 iterations, <= 256 points per codeword) quantises the residual ``rotate(x) - centroid`` in
``n_codebooks`` sub-spaces of ``d / n_codebooks`` dims, ``codebook_size = 2**bits`` codewords each.

Deliberate differences, all about reproducibility:

* ``fit(x, seed)`` seeds every random choice: the initial OPQ rotation (a random orthogonal matrix from
  ``seed``; faiss always uses its fixed seed 1234), the k-means inside OPQ (faiss: fixed 1234) and the
  final PQ k-means (faiss: 1234). The same seed gives identical codes.
* faiss runs single-threaded by default (``n_threads=1``) because its BLAS/OpenMP training results
  change with the thread count (checked: 1 and 2 threads give different codes); on small CPUs one
  thread is also faster (OpenMP spinning made PQ training 6x, and numpy work after an encode 5x, slower
  on 2 cores).
* the coarse centroid uses all training points (faiss sub-samples 256 points for a 1-centroid k-means),
  so it is exactly the normalised mean the references describe.
* no polysemous training: CPU faiss' IVFPQ would spend most of the fit (~50 s on Scientific) permuting
  codeword labels for Hamming-distance search, which item codes do not use; the reference trains with
  GPU faiss, which does not do it either. The reference's GPU k-means also differs numerically, so its
  codes are an equally valid but different quantisation.
* with fewer training vectors than dimensions (small catalogues: faiss 1.15's OPQ training aborts the
  process there) the same OPQ alternation runs in numpy (``_learn_rotation``) and faiss then trains the
  coarse centroid and PQ with that rotation fixed; ``opq_method`` ("faiss" or "numpy") records which.

Codes are computed with ``sa_encode`` (equal to what ``index.add`` stores; checked in tests).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from textrec.errors import ConfigError, DataError
from textrec.quant.faiss_io import IndexParts, build_index, parse_index, read_index, require_faiss, unpack_codes, write_index


def _check_shape(dim: int, n_codebooks: int, codebook_size: int) -> int:
    """Validate (d, D, M); return bits per code."""
    if n_codebooks < 1 or dim % n_codebooks:
        raise ConfigError(f"n_codebooks={n_codebooks} must divide the embedding dimension {dim} "
                          f"(e.g. {', '.join(str(k) for k in (8, 16, 32, 48, 64) if dim % k == 0) or 'a divisor'})")
    bits = codebook_size.bit_length() - 1
    if codebook_size < 2 or codebook_size != 1 << bits or bits > 16:
        raise ConfigError(f"codebook_size={codebook_size} must be a power of two between 2 and 65536")
    return bits


def _code_dtype(codebook_size: int):
    return np.uint8 if codebook_size <= 256 else np.int32 if codebook_size > 32768 else np.int16


def _as_matrix(x, dim: int, what: str = "vectors") -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise DataError(f"{what} of shape {x.shape}, expected (n, {dim})")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    return x


@contextlib.contextmanager
def faiss_threads(n: int):
    """Run faiss with ``n`` OpenMP threads inside the block (restored afterwards)."""
    faiss = require_faiss()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _learn_rotation(x: np.ndarray, rotation: np.ndarray, n_codebooks: int, bits: int, iterations: int,
                    seed: int) -> np.ndarray:
    """Non-parametric OPQ (Ge et al., CVPR 2013), the alternation faiss' ``OPQMatrix.train`` runs.

    Each iteration trains a PQ on the rotated vectors ``x @ R.T`` (40 k-means iterations the first time,
    4 after, as faiss), reconstructs them (``y``) and sets ``R`` to the orthogonal Procrustes solution
    minimising ``||x @ R.T - y||`` (``R.T = U @ Vt`` for ``x.T @ y = U S Vt``). Used for fewer vectors than
    dimensions, where faiss' own training aborts; returns the (d, d) rotation.
    """
    faiss = require_faiss()
    x = x.astype(np.float64)
    for it in range(iterations):
        rotated = np.ascontiguousarray(x @ rotation.T, dtype=np.float32)
        pq = faiss.ProductQuantizer(x.shape[1], n_codebooks, bits)
        pq.cp.seed, pq.cp.niter, pq.cp.min_points_per_centroid = seed + it, 40 if it == 0 else 4, 1
        pq.train(rotated)
        y = pq.decode(pq.compute_codes(rotated)).astype(np.float64)
        u, _, vt = np.linalg.svd(x.T @ y)
        rotation = (u @ vt).T
    return rotation


class ItemQuantizer:
    """OPQ + IVF1 + PQ over d-dim vectors: ``fit``, ``encode`` to (n, D) codes, ``reconstruct``."""

    def __init__(self, dim: int, n_codebooks: int = 32, codebook_size: int = 256, opq_iterations: int = 50,
                 n_threads: int = 1) -> None:
        self.bits = _check_shape(dim, n_codebooks, codebook_size)
        self.dim, self.n_codebooks, self.codebook_size = dim, n_codebooks, codebook_size
        self.opq_iterations = opq_iterations  # faiss OPQMatrix default niter
        self.n_threads = n_threads  # faiss threads for fit and encode; results depend on it when training
        self.index = None  # the trained faiss IndexPreTransform
        self._parts: IndexParts | None = None

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_faiss(cls, index, where: str = "index") -> ItemQuantizer:
        """Wrap a trained OPQ + IVF1 + PQ faiss index (e.g. a released one)."""
        parts = parse_index(index, where)
        q = cls(parts.rotation.shape[0], parts.codebooks.shape[0], parts.codebooks.shape[1])
        q.index, q._parts = index, parts
        return q

    @classmethod
    def load(cls, path: str | Path) -> ItemQuantizer:
        return cls.from_faiss(read_index(path), where=str(path))

    def fit(self, x: np.ndarray, seed: int = 2020) -> ItemQuantizer:
        """Train on (n, d) vectors; deterministic for a fixed ``seed`` (and ``n_threads``)."""
        faiss = require_faiss()
        x = _as_matrix(x, self.dim, "training vectors")
        if len(x) < self.codebook_size:
            raise DataError(f"{len(x)} training vectors for {self.codebook_size} codewords; need at least as many "
                            "vectors as codewords (lower --codebook-size)")
        D, bits = self.n_codebooks, self.bits
        index = faiss.index_factory(self.dim, f"OPQ{D},IVF1,PQ{D}x{bits}", faiss.METRIC_INNER_PRODUCT)
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        ivf = faiss.downcast_index(index.index)
        init = np.linalg.qr(np.random.default_rng(seed).standard_normal((self.dim, self.dim)))[0]
        # faiss 1.15's OPQ training corrupts memory (aborts the process) with fewer training vectors than
        # dimensions; there the same alternation is run here in numpy (``_learn_rotation``) and handed to
        # faiss as a fixed rotation. ``opq_method`` records which one learnt it.
        self.opq_method = "faiss" if len(x) >= self.dim else "numpy"
        if self.opq_method == "numpy":
            with faiss_threads(self.n_threads):
                init = _learn_rotation(x, init, D, bits, self.opq_iterations, seed)
        opq.niter = self.opq_iterations if self.opq_method == "faiss" else 0
        opq_pq = faiss.ProductQuantizer(self.dim, D, bits)  # faiss' own would be 8-bit and seed 1234
        opq_pq.cp.seed = seed
        opq.pq = opq_pq
        faiss.copy_array_to_vector(init.astype(np.float32).ravel(), opq.A)
        ivf.cp.seed = ivf.pq.cp.seed = seed
        ivf.do_polysemous_training = False  # only relabels codewords (for Hamming search); the reference's GPU faiss skips it
        ivf.cp.max_points_per_centroid = max(len(x), 256)  # the exact mean, not a 256-point sample
        for cp in (opq_pq.cp, ivf.pq.cp):
            cp.min_points_per_centroid = 1  # silence faiss' "please provide more points" (reported in the JSON instead)
        try:
            with faiss_threads(self.n_threads):
                index.train(x)
        finally:
            opq.pq = None  # the ProductQuantizer above is freed with this frame
        self.index, self._parts = index, parse_index(index)
        return self

    # ---- use -----------------------------------------------------------------------------------------
    def _require_fitted(self) -> IndexParts:
        if self._parts is None:
            raise DataError("the quantizer is not fitted; call fit() or load() first")
        return self._parts

    @property
    def rotation(self) -> np.ndarray:
        """(d, d) orthogonal OPQ rotation; rotated = x @ rotation.T."""
        return self._require_fitted().rotation

    @property
    def centroid(self) -> np.ndarray:
        """(d,) coarse centroid in the rotated space (unit norm for an inner-product index)."""
        return self._require_fitted().centroid

    @property
    def codebooks(self) -> np.ndarray:
        """(n_codebooks, codebook_size, d // n_codebooks) PQ codewords of the residual."""
        return self._require_fitted().codebooks

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, d) vectors -> (n, n_codebooks) codes (uint8 for <= 256 codewords, else int16/int32)."""
        self._require_fitted()
        x = _as_matrix(x, self.dim)
        if not len(x):
            return np.zeros((0, self.n_codebooks), dtype=_code_dtype(self.codebook_size))
        with faiss_threads(self.n_threads):  # more threads spin and slow down the BLAS work that follows
            packed = self.index.sa_encode(x)
        return unpack_codes(packed, self.n_codebooks, self.bits).astype(_code_dtype(self.codebook_size))

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """(n, n_codebooks) codes -> (n, d) float32 vectors in the original space."""
        parts = self._require_fitted()
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.n_codebooks:
            raise DataError(f"codes of shape {codes.shape}, expected (n, {self.n_codebooks})")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise DataError(f"codes must lie in 0..{self.codebook_size - 1}")
        sub = parts.codebooks[np.arange(self.n_codebooks), codes.astype(np.int64)]  # (n, D, d/D)
        rotated = parts.centroid + sub.reshape(len(codes), self.dim)
        return (rotated @ parts.rotation).astype(np.float32)

    def save(self, path: str | Path, codes: np.ndarray | None = None, ids: np.ndarray | None = None) -> Path:
        """Write a faiss index file; with ``codes`` (and ``ids``, default 0..n-1) stored in its list 0."""
        parts = self._require_fitted()
        codes = np.zeros((0, self.n_codebooks), np.int32) if codes is None else np.asarray(codes, dtype=np.int32)
        ids = np.arange(len(codes), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(codes),):
            raise ValueError(f"{len(ids)} ids for {len(codes)} codes")
        return write_index(build_index(parts._replace(codes=codes, ids=ids)), path)
