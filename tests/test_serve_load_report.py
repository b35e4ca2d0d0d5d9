"""benchmarks/serve_load.py's report: empty levels print dashes (no ZeroDivisionError), failures
give a non-zero exit status, and the ratios compare the two modes of the same level."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("bench_serve_load", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def result(module, mode, clients, latencies_s, wall_s, statuses=None, dtype="float32"):
    r = module.Result(mode, "text", clients, wall_s, dtype=dtype)
    r.samples = [module.Sample(200, s, 10.0, 1.0, clients) for s in latencies_s]
    r.samples += [module.Sample(status, 0.01) for status in statuses or []]
    return r


def test_empty_levels_print_dashes_and_fail_the_run(serve_load):
    empty = serve_load.Result("batched", "text", 8, 0.0)
    assert "–" in serve_load.row(empty) and "nan" not in serve_load.row(empty)
    assert serve_load.ratio_rows([empty, serve_load.Result("unbatched", "text", 8, 0.0)]) == [
        "| float32 | text | 8 | n/a | n/a | n/a | – | – | n/a |"]
    assert serve_load.failures([empty]) == ["batched text x8: no answered query"]


def test_ratios_and_the_p99_target(serve_load):
    results = [result(serve_load, "unbatched", 1, [0.1] * 10, 1.0),
               result(serve_load, "unbatched", 4, [0.4] * 10, 4.0, statuses=[503, 0]),
               result(serve_load, "batched", 4, [0.2] * 20, 2.0)]
    [row] = serve_load.ratio_rows(results)
    # throughput 10/s against 2.5/s; target = 2 x 100 ms x 4 clients / 4.0 = 200 ms; p99 200 ms meets it
    assert row == "| float32 | text | 4 | 4.00x | 0.50x | 0.50x | 200 | 200 | yes |"
    assert serve_load.failures(results) == ["unbatched text x4: 1 errors other than 503"]


def test_dtype_ratios_compare_with_float32_of_the_same_mode_and_level(serve_load):
    results = [result(serve_load, "batched", 8, [0.3] * 30, 3.0),
               result(serve_load, "batched", 8, [0.1] * 30, 1.0, dtype="bfloat16"),
               result(serve_load, "unbatched", 8, [0.1] * 30, 1.0, dtype="bfloat16")]  # no float32 peer
    assert serve_load.dtype_rows(results) == ["| batched | bfloat16 | text | 8 | 3.00x | 0.33x | 0.33x |"]


def test_missing_data_is_exit_status_2(serve_load, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["serve_load.py", "--data", str(tmp_path / "none")])
    assert serve_load.main() == 2
