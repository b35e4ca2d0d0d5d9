"""The on-disk image feature cache: on by default under the user cache directory, bounded in size."""

from __future__ import annotations

import os
import time

import torch

from mmembed.encoders.image_cache import FeatureCache, feature_cache_dir


def test_the_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MMEMBED_IMAGE_CACHE", raising=False)
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "cache"))
    assert feature_cache_dir() == tmp_path / "cache" / "image-features"
    monkeypatch.delenv("MMEMBED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert feature_cache_dir() == tmp_path / "xdg" / "mmembed" / "image-features"
    monkeypatch.setenv("MMEMBED_IMAGE_CACHE", "off")
    assert feature_cache_dir() is None
    assert feature_cache_dir(tmp_path / "mine") == tmp_path / "mine"  # an explicit setting wins
    assert feature_cache_dir(False) is None and feature_cache_dir("off") is None


def test_the_disk_level_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    row = torch.zeros(256)  # about 1.1 kB per file with the safetensors header
    cache = FeatureCache(max_bytes=0, directory=tmp_path, disk_max_bytes=6_000)
    for i in range(4):
        cache.put(f"{i:02d}", row + i)
    old = time.time() - 100
    for i in range(4):  # make the order of use explicit: 00 oldest ... 03 newest
        os.utime(tmp_path / f"{i:02d}" / f"{i:02d}.safetensors", (old + i, old + i))
    torch.testing.assert_close(cache.get("00"), row)  # reading it makes it the most recently used
    for i in range(4, 6):  # the sixth file passes the bound: back under 90 % of it
        cache.put(f"{i:02d}", row + i)
    files = sorted(p.stem for p in tmp_path.glob("*/*.safetensors"))
    assert sum(p.stat().st_size for p in tmp_path.glob("*/*.safetensors")) <= 0.9 * 6_000
    assert files == ["00", "03", "04", "05"]  # 01 and 02 were the least recently used
