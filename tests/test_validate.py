"""Dataset validation reports every problem with file, line and field; images fail with their item id."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmembed.cli.main import main
from mmembed.data.images import ImageStore
from mmembed.data.validate import validate_directory
from mmembed.errors import ImageError

Q0 = "query/test/mbeir_toy_task0_test.jsonl"
P0 = "cand_pool/local/mbeir_toy_task0_cand_pool.jsonl"


def _edit_line(path, lineno, change):
    lines = path.read_text().splitlines()
    obj = json.loads(lines[lineno - 1])
    change(obj)
    lines[lineno - 1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


def test_clean_dataset_has_no_problems(toy_dir):
    report = validate_directory(toy_dir)
    assert report.ok, list(report.lines())
    assert report.checked_records > 30


def test_every_problem_is_reported_with_its_location(toy_dir):
    queries, pool = toy_dir / Q0, toy_dir / P0
    lines = queries.read_text().splitlines()
    lines[0] = lines[0][:-5]  # line 1: malformed JSON
    queries.write_text("\n".join(lines) + "\n")
    _edit_line(queries, 2, lambda o: o.pop("pos_cand_list"))                       # missing field
    _edit_line(queries, 3, lambda o: o.update(query_modality="audio"))             # unknown modality
    _edit_line(queries, 4, lambda o: o.update(query_modality="image,text"))        # contradicts the fields
    _edit_line(queries, 5, lambda o: o.update(pos_cand_list=["10:999"]))           # positive not in pool
    _edit_line(pool, 2, lambda o: o.update(did="10:0"))                            # duplicate id
    _edit_line(pool, 3, lambda o: o.update(img_path="../../etc/passwd"))           # escapes the root

    report = validate_directory(toy_dir)
    text = "\n".join(report.lines())
    assert not report.ok
    expected = [
        (f"{Q0}:1", "malformed JSON"),
        (f"{Q0}:2", "'pos_cand_list'", "missing field"),
        (f"{Q0}:3", "'query_modality'", "unknown modality 'audio'"),
        (f"{Q0}:4", "'query_modality'", "says 'image,text'"),
        (f"{Q0}:5", "'pos_cand_list'", "'10:999' is not in the pool"),
        (f"{P0}:2", "'did'", "duplicate id"),
        (f"{P0}:3", "'img_path'", "escapes the image root"),
    ]
    for parts in expected:
        assert any(all(p in line for p in parts) for line in report.lines()), (parts, text)


def test_cli_validate_exit_codes(toy_dir, capsys):
    assert main(["data", "validate", str(toy_dir)]) == 0
    assert "no problems" in capsys.readouterr().out
    (toy_dir / "images" / "red.png").unlink()
    assert main(["data", "validate", str(toy_dir)]) == 1
    out = capsys.readouterr().out
    assert "image file not found" in out and "10:0" in out


def test_cli_reports_user_mistakes_in_one_line(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset directory not found" in err and "Traceback" not in err


def test_image_errors_name_the_item(tmp_path):
    store = ImageStore(tmp_path, max_pixels=10_000)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="item '1:1'.*unreadable image"):
        store.load("broken.png", "1:1")
    with pytest.raises(ImageError, match="item '1:2'.*image file not found"):
        store.load("missing.png", "1:2")
    with pytest.raises(ImageError, match="item '1:3'.*exceeds the limit of 10000 pixels"):
        store.load("big.png", "1:3")
    with pytest.raises(ImageError, match="escapes the image root"):
        store.load("../outside.png", "1:4")
    with pytest.raises(ImageError, match="must be relative"):
        store.load("/etc/hosts", "1:5")
    image = store.load("clear.png", "1:6")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # transparency -> white


def test_image_folder_linked_in_from_elsewhere_is_followed(tmp_path):
    """M-BEIR users link the image archive in: ``mbeir_images -> /data/...`` must be read."""
    root, elsewhere = tmp_path / "M-BEIR", tmp_path / "data" / "mbeir_images"
    (elsewhere / "coco").mkdir(parents=True)
    root.mkdir()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(elsewhere / "coco" / "a.png")
    (root / "mbeir_images").symlink_to(elsewhere, target_is_directory=True)
    image = ImageStore(root).load("mbeir_images/coco/a.png", "9:1")
    assert image.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(("path", "message"), [
    ("mbeir_images/../../secret.png", "escapes the image root"),
    ("a\\..\\..\\secret.png", "escapes the image root"),
    ("C:/secret.png", "must be relative"),
    ("a\0.png", "NUL byte"),
])
def test_paths_are_checked_lexically(tmp_path, path, message):
    with pytest.raises(ImageError, match=message):
        ImageStore(tmp_path).load(path, "1:1")
