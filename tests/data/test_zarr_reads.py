"""Zarr read through a cache of decoded chunks (issue 23, item 13): what is read is what zarr-python reads,
for v2 and v3 stores, compressed or not, at the edges, with chunks never written; a batch read together
equals items read one by one."""

import numpy as np
import pytest
import torch

from icone.config import DataConfig
from icone.data import IndexedDataset, load_dataset
from icone.data.chunk_cache import ChunkCache
from icone.data.zarr_chunks import direct_reader


def store(tmp_path, version, compressor, shards=None):
    import zarr

    array = np.random.default_rng(0).integers(0, 60000, (2, 37, 50, 45)).astype(np.uint16)
    kwargs = {"shape": array.shape, "chunks": (1, 16, 16, 16), "dtype": "uint16", "zarr_format": version}
    if version == 2:
        kwargs["compressors"] = None if compressor is None else [__import__("numcodecs").Blosc()]
    else:
        kwargs["compressors"] = None if compressor is None else [zarr.codecs.ZstdCodec()]
    if shards:
        kwargs["shards"] = shards
    z = zarr.create_array(str(tmp_path / "a.zarr"), fill_value=7, **kwargs)
    z[:, :32] = array[:, :32]  # the chunks past z 32 are never written: the fill value
    array[:, 32:] = 7
    return tmp_path / "a.zarr", z, array


@pytest.mark.parametrize(("version", "compressor"), [(2, None), (2, "blosc"), (3, None), (3, "zstd")])
def test_the_direct_reader_and_the_cache_read_what_zarr_reads(tmp_path, version, compressor):
    path, z, array = store(tmp_path, version, compressor)
    read = direct_reader(path, array.shape)
    assert read is not None
    cache = ChunkCache(z, z.chunks, budget=64 << 10, read_chunk=read)  # a small budget: chunks are evicted
    rng = np.random.default_rng(1)
    for _ in range(40):
        lo = [int(rng.integers(0, n)) for n in array.shape[1:]]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, array.shape[1:])]
        index = (slice(None), *(slice(a, b) for a, b in zip(lo, hi)))
        np.testing.assert_array_equal(cache[index], array[index])
    assert cache.size <= 64 << 10 or len(cache.cache) == 1
    np.testing.assert_array_equal(cache[(1, slice(30, 37), 3, slice(None))], array[1, 30:37, 3, :])
    cache.prefetch([(slice(None), slice(0, 20), slice(0, 20), slice(0, 20))])
    np.testing.assert_array_equal(
        cache[(slice(None), slice(0, 20), slice(0, 20), slice(0, 20))], array[:, :20, :20, :20]
    )


def test_a_sharded_store_is_read_through_zarr(tmp_path):
    path, z, array = store(tmp_path, 3, "zstd", shards=(1, 32, 32, 32))
    assert direct_reader(path, array.shape) is None
    cache = ChunkCache(z, z.chunks)
    np.testing.assert_array_equal(cache[(slice(None), slice(5, 36), slice(0, 50), slice(7, 9))], array[:, 5:36, :, 7:9])


def test_a_batch_read_together_equals_items_read_one_by_one(tmp_path):
    path, _, _ = store(tmp_path, 3, "zstd")
    data = load_dataset(DataConfig(source=str(path), patch=[8], sampler="random", axes="CZYX"))
    train = IndexedDataset(data.train)
    train.set_epoch(3)
    rows = [5, 0, 17, 9, 33]
    together = train.__getitems__(rows)
    for (x, index, label), row in zip(together, rows):
        alone = train[row]
        assert torch.equal(x, alone[0]) and index == row and label == alone[2]
