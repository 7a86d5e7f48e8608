"""The defaults benchmark's corpora and arguments (its full run is by hand: benchmarks/RESULTS-defaults.md)."""

from __future__ import annotations

import pytest
from PIL import Image

from benchmarks import defaults


def test_png400_is_a_labelled_folder_of_400_digit_pngs(tmp_path):
    overrides = defaults.prepare("png400", tmp_path, tmp_path)
    root = tmp_path / "png400"
    assert overrides == [f"corpus.source={root}"]
    files = sorted(root.rglob("*.png"))
    assert len(files) == 400 and {f.parent.name for f in files} == {str(d) for d in range(10)}
    with Image.open(files[0]) as img:
        assert img.size == (32, 32) and img.mode == "L"


def test_unknown_rows_are_an_argument_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        defaults.main(["--rows", "digits,imagenet", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_photo_folders_mixed_sizes_with_exif_rotations_or_plain_pngs(tmp_path):
    """The writer behind mixed-photos, cifar10k and the sweep's stand-ins for them."""
    import numpy as np
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y, names = np.arange(12) % 3, np.array(["cat", "dog", "ship"])
    defaults.write_photo_folder(tmp_path / "mixed", x, y, names, range(2, 12), mixed_sizes=True)
    files = sorted((tmp_path / "mixed").rglob("*.jpg"), key=lambda f: f.name)
    assert [f.stem for f in files] == sorted(f"{i:05d}" for i in range(2, 12))
    sizes = set()
    for f in files:
        with Image.open(f) as img:
            upright = ImageOps.exif_transpose(img)
            assert (img.getexif().get(0x0112) == 6) == (int(f.stem) % 10 == 0)  # every tenth stored rotated
            sizes.add(upright.size)
    assert sizes == set(defaults.PHOTO_SIZES)
    defaults.write_photo_folder(tmp_path / "plain", x, y, names, range(3), mixed_sizes=False)
    pngs = sorted((tmp_path / "plain").rglob("*.png"))
    assert [p.parent.name for p in pngs] == ["cat", "dog", "ship"]
    with Image.open(pngs[1]) as img:
        assert img.size == (32, 32) and np.array_equal(np.asarray(img), x[1])


def test_man_pages_become_a_labelled_text_folder(tmp_path):
    """The manpages row's corpus: troff made plain text, one folder per section, links and stubs
    left out; a machine without pages gets a clear error (the row is reported as not run)."""
    import gzip

    from benchmarks.defaults import write_man_corpus

    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    (root / "man2").mkdir()
    page = (
        '.\\" a comment that must not reach the text\n.TH LS 1\n.SH NAME\nls \\- list directory contents\n'
        ".SH DESCRIPTION\n.B ls\nlists \\fBfiles\\fR " + "and folders " * 20 + "\n.PP\n"
    )
    for name, body in [("ls.1.gz", page), ("dir.1.gz", ".so man1/ls.1\n"), ("tiny.1.gz", ".SH NAME\nx\n")]:
        (root / "man1" / name).write_bytes(gzip.compress(body.encode()))
    (root / "man2" / "read.2.gz").write_bytes(gzip.compress(page.replace("ls", "read").encode()))
    out = tmp_path / "corpus"
    out.mkdir()
    assert write_man_corpus(out, root) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == ["man1/ls.1.txt", "man2/read.2.txt"]
    text = (out / "man1" / "ls.1.txt").read_text()
    assert "list directory contents" in text and "files" in text and "comment" not in text
    assert "\\f" not in text and ".SH" not in text and ".TH" not in text
    with pytest.raises(FileNotFoundError, match="no manual pages"):
        write_man_corpus(tmp_path / "empty", tmp_path / "nowhere")


def test_table_shows_the_paired_noise_of_each_p10_difference():
    row = {
        "row": "mixed-photos",
        "n_items": 600,
        "input_shape": [3, 64, 64],
        "code_size": 10,
        "ae_sse": 227.6,
        "pca_sse": 231.6,
        "ae_p10": 0.19,
        "base_p10": 0.185,
        "baseline": "pca",
        "p10_noise": {"difference": 0.005, "standard_error": 0.012, "within_noise": True},
        "n_queries": 60,
        "ae_acc": 0.3,
        "base_acc": 0.3,
        "ae_nmi": 0.35,
        "base_nmi": 0.35,
        "beats_both": True,
        "kept_start": False,
        "epochs": 375,
        "steps": 1500,
        "train_s": 75.0,
        "peak_rss_mb": 862,
    }
    clear = {**row, "row": "digits", "p10_noise": {"difference": 0.02, "standard_error": 0.004, "within_noise": False}}
    older = {k: v for k, v in row.items() if k != "p10_noise"}  # a row recorded before the estimate
    md = defaults.table([row, clear, older], [], ["--rows", "mixed-photos"])
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|")  # header and rows have the same columns
    assert "| +0.0050 ± 0.0120 (60) (within noise) |" in lines[1]
    assert "| +0.0200 ± 0.0040 (60) |" in lines[2]
    assert "| 0.1850 (pca) | – |" in lines[3]
