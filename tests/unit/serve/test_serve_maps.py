"""Kept anomaly maps stay within their bounds: count, bytes and age; the oldest go first, and a map
being read when it is evicted is still read whole."""

import pytest

from ldm_ood.serve.maps import MapStore


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _map(tmp_path, name, size):
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes([len(name)]) * size)
    return path


def _kept(store, map_id):
    opened = store.open(map_id)
    if opened is not None:
        opened[1].close()
    return opened is not None


def test_the_oldest_maps_go_first_past_the_count_or_byte_bound(tmp_path):
    store = MapStore(tmp_path / "maps", max_count=3, max_bytes=1000, ttl_s=60)
    kept = [store.keep(_map(tmp_path, f"m{i}", 100), f"case{i}") for i in range(4)]
    assert len(store) == 3 and not _kept(store, kept[0].id)  # count bound: the first went
    assert not (tmp_path / "src" / "m3").exists()  # moved, not copied
    big = store.keep(_map(tmp_path, "big", 850), "big")  # 300 + 850 > 1000, 200 + 850 too: two go
    assert [_kept(store, k.id) for k in kept[1:]] == [False, False, True]
    assert store.total_bytes == 950 and len(list((tmp_path / "maps").iterdir())) == 2
    assert store.keep(_map(tmp_path, "huge", 1001), "huge") is None  # larger than the bound alone
    assert not (tmp_path / "src" / "huge").exists() and len(store) == 2
    meta, fh = store.open(big.id)
    with fh:
        assert meta.filename == "big_anomaly_map.nii.gz" and fh.read() == bytes([3]) * 850


def test_maps_expire_and_can_be_deleted(tmp_path):
    clock = Clock()
    store = MapStore(tmp_path / "maps", max_count=10, max_bytes=10_000, ttl_s=30, clock=clock)
    first = store.keep(_map(tmp_path, "a", 10), "a")
    clock.now = 20
    second = store.keep(_map(tmp_path, "b", 10), "b")
    assert first.expires == 30 and second.expires == 50
    clock.now = 30
    assert not _kept(store, first.id) and not (tmp_path / "maps" / f"{first.id}.nii.gz").exists()
    meta, fh = store.open(second.id)
    fh.close()
    assert store.delete(second.id) and not store.delete(second.id) and len(store) == 0


def test_a_map_open_for_reading_survives_its_eviction(tmp_path):
    store = MapStore(tmp_path / "maps", max_count=1, max_bytes=10_000, ttl_s=60)
    first = store.keep(_map(tmp_path, "a", 4000), "a")
    meta, fh = store.open(first.id)
    store.keep(_map(tmp_path, "bb", 10), "b")  # evicts the first while it is open
    with fh:
        assert fh.read() == bytes([1]) * 4000
    assert not _kept(store, first.id)


@pytest.mark.parametrize("bounds", [dict(max_count=0), dict(max_bytes=0), dict(ttl_s=0)])
def test_a_zero_bound_keeps_no_map(tmp_path, bounds):
    store = MapStore(tmp_path / "maps", **{"max_count": 5, "max_bytes": 1000, "ttl_s": 10, **bounds})
    assert store.keep(_map(tmp_path, "a", 10), "a") is None and not (tmp_path / "src" / "a").exists()
