"""Read and write OPQ + IVF1 + PQ faiss index files in the layout VQ-Rec releases them.

Reference: VQ-Rec's ``pq.py`` builds ``faiss.index_factory(d, "OPQ32,IVF1,PQ32x8", METRIC_INNER_PRODUCT)``,
trains it on the "strict" (training-split) items and adds them, so the saved
``X.OPQ32,IVF1,PQ32x8.strict.index`` holds: an ``IndexPreTransform`` whose one transform is the OPQ
rotation (a d x d ``LinearTransform`` without bias), then an ``IndexIVFPQ`` with a single inverted list,
a flat coarse quantizer holding one centroid (the L2-normalised mean), and PQ codebooks applied to the
residual ``rotation @ x - centroid``. ``utils.parse_faiss_index`` reads the rotation, the coarse
centroid, the codebooks and the codes stored in inverted list 0 (ids 0..n-1 = the j-th smallest strict
item token). VERIFIED here on the six released indexes (REFERENCE_NOTES sections 2 and 7).

``parse_index`` returns those arrays (plus the ids, which the reference ignores) and checks the
structure; ``build_index`` makes a fresh index from them, so ``import -> export -> import`` is exact.
Codes are unpacked to one integer per sub-space (faiss packs ``nbits`` bits per code, least
significant bit first).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from textrec.errors import DataError
from textrec.io import atomic_path


class IndexParts(NamedTuple):
    """Everything an OPQ + IVF1 + PQ index holds, as numpy arrays."""

    rotation: np.ndarray  # (d, d) float32; rotated = x @ rotation.T
    centroid: np.ndarray  # (d,) float32, the single coarse centroid, in the rotated space
    codebooks: np.ndarray  # (n_codebooks, codebook_size, d // n_codebooks) float32
    codes: np.ndarray  # (n, n_codebooks) int32 codes stored in inverted list 0, values 0..codebook_size-1
    ids: np.ndarray  # (n,) int64 ids stored with the codes
    metric: int  # faiss metric type (METRIC_INNER_PRODUCT = 0, METRIC_L2 = 1)

    @property
    def nbits(self) -> int:
        return int(self.codebooks.shape[1]).bit_length() - 1


def require_faiss(purpose: str = "quantising item codes"):
    """The faiss module, or a one-line error naming the extra that brings it (``textrec.extras``)."""
    from textrec.extras import require

    return require("faiss", purpose)


def unpack_codes(packed: np.ndarray, n_codebooks: int, nbits: int) -> np.ndarray:
    """(n, code_size) uint8 faiss PQ codes -> (n, n_codebooks) int32."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(len(packed), -1)
    if nbits == 8:
        return packed[:, :n_codebooks].astype(np.int32)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : n_codebooks * nbits]
    bits = bits.reshape(len(packed), n_codebooks, nbits).astype(np.int32)
    return (bits << np.arange(nbits, dtype=np.int32)).sum(axis=2, dtype=np.int32)


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """(n, n_codebooks) integer codes -> (n, ceil(n_codebooks * nbits / 8)) uint8 as faiss stores them."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << nbits):
        raise ValueError(f"codes must lie in 0..{(1 << nbits) - 1}")
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    bits = ((codes[:, :, None].astype(np.int64) >> np.arange(nbits)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(len(codes), -1), axis=1, bitorder="little")


def read_index(path: str | Path):
    """``faiss.read_index`` with one-line errors."""
    faiss = require_faiss()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: faiss index file not found")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise DataError(f"{path}: not a readable faiss index ({str(e).strip().splitlines()[-1]})") from None


def write_index(index, path: str | Path) -> Path:
    """Write a faiss index atomically."""
    faiss = require_faiss()
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def parse_index(index, where: str = "index") -> IndexParts:
    """The arrays of an OPQ + IVF1 + PQ index (see module doc); ``DataError`` for any other structure."""
    faiss = require_faiss()
    expected = "expected IndexPreTransform(OPQ LinearTransform) + IndexIVFPQ with one list"
    if not isinstance(index, faiss.IndexPreTransform) or index.chain.size() != 1:
        raise DataError(f"{where}: {expected}, found {type(index).__name__}")
    vt = faiss.downcast_VectorTransform(index.chain.at(0))
    ivf = faiss.downcast_index(index.index)
    if not isinstance(vt, faiss.LinearTransform) or vt.d_in != vt.d_out or not isinstance(ivf, faiss.IndexIVFPQ):
        raise DataError(f"{where}: {expected}, found {type(vt).__name__} + {type(ivf).__name__}")
    if ivf.nlist != 1 or not ivf.by_residual:
        raise DataError(f"{where}: {expected}, found {ivf.nlist} lists (by_residual={ivf.by_residual})")
    if vt.have_bias and np.any(faiss.vector_to_array(vt.b)):
        raise DataError(f"{where}: the OPQ transform has a bias; expected a pure rotation")
    d = vt.d_in
    rotation = faiss.vector_to_array(vt.A).reshape(d, d).astype(np.float32)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if quantizer.ntotal != 1:
        raise DataError(f"{where}: coarse quantizer holds {quantizer.ntotal} centroids, expected 1")
    centroid = quantizer.reconstruct(0).astype(np.float32)
    pq = ivf.pq
    codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(np.float32)
    invlists = ivf.invlists
    n = invlists.list_size(0)
    if n:
        packed = faiss.rev_swig_ptr(invlists.get_codes(0), n * invlists.code_size).copy()
        ids = faiss.rev_swig_ptr(invlists.get_ids(0), n).copy().astype(np.int64)
        codes = unpack_codes(packed.reshape(n, invlists.code_size), pq.M, pq.nbits)
    else:
        codes, ids = np.zeros((0, pq.M), dtype=np.int32), np.zeros(0, dtype=np.int64)
    return IndexParts(rotation, centroid, codebooks, codes, ids, int(ivf.metric_type))


def build_index(parts: IndexParts):
    """A fresh OPQ + IVF1 + PQ faiss index holding exactly ``parts`` (codes in list 0 with their ids)."""
    faiss = require_faiss()
    d = parts.rotation.shape[0]
    n_codebooks, codebook_size, dsub = parts.codebooks.shape
    if parts.rotation.shape != (d, d) or parts.centroid.shape != (d,) or n_codebooks * dsub != d:
        raise ValueError(f"inconsistent shapes: rotation {parts.rotation.shape}, centroid {parts.centroid.shape}, "
                         f"codebooks {parts.codebooks.shape}")
    if codebook_size != 1 << parts.nbits:
        raise ValueError(f"codebook size {codebook_size} is not a power of two")
    rotation = faiss.LinearTransform(d, d, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(parts.rotation, dtype=np.float32).ravel(), rotation.A)
    rotation.is_trained = True
    rotation.set_is_orthonormal()
    quantizer = faiss.IndexFlatIP(d) if parts.metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
    quantizer.add(np.ascontiguousarray(parts.centroid, dtype=np.float32)[None])
    ivf = faiss.IndexIVFPQ(quantizer, d, 1, n_codebooks, parts.nbits, parts.metric)
    faiss.copy_array_to_vector(np.ascontiguousarray(parts.codebooks, dtype=np.float32).ravel(), ivf.pq.centroids)
    ivf.is_trained = True
    n = len(parts.codes)
    if n:
        packed = pack_codes(parts.codes, parts.nbits)
        ids = np.ascontiguousarray(parts.ids, dtype=np.int64)
        ivf.invlists.add_entries(0, n, faiss.swig_ptr(ids), faiss.swig_ptr(packed))
        ivf.ntotal = n
    index = faiss.IndexPreTransform(rotation, ivf)
    index.ntotal = n
    index.is_trained = True
    return index


def import_index(path: str | Path) -> IndexParts:
    """Read and parse an OPQ + IVF1 + PQ index file (e.g. one VQ-Rec released)."""
    return parse_index(read_index(path), where=str(path))


def export_index(parts: IndexParts, path: str | Path) -> Path:
    """Write ``parts`` as a faiss index file that ``faiss.read_index`` (and VQ-Rec) can read."""
    return write_index(build_index(parts), path)
