"""Bad input a user will try (issue 9, item 5): each gives sane behaviour or a one-line error naming
the argument and the fix, never a traceback or a silently wrong result.

Folders are generated with PIL in ``tmp_path``; the CLI runs are tiny (a few epochs on <= 100
generated images, one thread).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bgcn.data import check_every_class_labelled, label_masks, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(seed, h=6, w=6):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ folders
def test_folder_with_one_class_is_refused(tmp_path):
    for i in range(4):
        _png(tmp_path / "cats" / f"{i}.png", _rgb(i))
    with pytest.raises(ValueError, match=r"only one class.*'cats'.*at least 2 classes"):
        load_dataset(str(tmp_path))


def test_images_in_sub_folders_of_a_class_are_all_read(tmp_path):
    files = {"cats/a.png": 0, "cats/2019/b.png": 1, "cats/2019/deep/c.png": 2, "cats/2020/d.png": 3,
             "dogs/e.png": 4, "dogs/x/f.png": 5}
    for rel, seed in files.items():
        _png(tmp_path / rel, _rgb(seed))
    _png(tmp_path / "dogs" / ".thumbs" / "g.png", _rgb(9))  # hidden folder: skipped
    _png(tmp_path / "dogs" / ".h.png", _rgb(9))              # hidden file: skipped
    ds = load_dataset(str(tmp_path))
    assert ds.class_names == ["cats", "dogs"]
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    # sorted by relative path inside each class: 2019/b, 2019/deep/c, 2020/d, a; then e, x/f
    order = [1, 2, 3, 0, 4, 5]
    want = torch.stack([torch.from_numpy(_rgb(s).astype(np.float32) / 255).permute(2, 0, 1) for s in order])
    assert torch.equal(ds.images, want)


def _gradient16(h=8, w=8):
    return np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)


def test_16_bit_png_scaled_by_65535_not_clipped(tmp_path):
    a = _gradient16()
    _png(tmp_path / "a" / "x.png", a)
    _png(tmp_path / "b" / "y.png", a[::-1].copy())
    from PIL import Image

    with Image.open(tmp_path / "a" / "x.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    for grayscale in (True, False):
        ds = load_dataset(str(tmp_path), grayscale=grayscale)
        assert ds.images.shape == (2, 1 if grayscale else 3, 8, 8)
        want = torch.from_numpy(a.astype(np.float64) / 65535)
        err = (ds.images[0].double() - want).abs().max().item()
        assert err < 1e-6, err  # float32 rounding of values in [0, 1]: <= 6e-8
        assert float((ds.images == 1.0).double().mean()) < 0.05  # was 98 % before


def test_32_bit_int_and_float_images(tmp_path):
    from PIL import Image

    a = _gradient16()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(a.astype(np.int32)).save(tmp_path / "a" / "i.tif")        # mode "I"
    Image.fromarray((a / 65535).astype(np.float32)).save(tmp_path / "b" / "f.tif")  # mode "F"
    ds = load_dataset(str(tmp_path), grayscale=True)
    want = torch.from_numpy(a.astype(np.float64) / 65535)
    assert (ds.images[0, 0].double() - want).abs().max().item() < 1e-6
    assert (ds.images[1, 0].double() - want).abs().max().item() < 1e-6
    Image.fromarray((a / 100).astype(np.float32)).save(tmp_path / "b" / "g.tif")  # values up to 655
    with pytest.raises(ValueError, match=r"g\.tif.*\[0, 1\]"):
        load_dataset(str(tmp_path))


def test_empty_folder_and_loose_images(tmp_path):
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(str(tmp_path))
    _png(tmp_path / "a.png", _rgb(0))
    _png(tmp_path / "b.png", _rgb(1))
    with pytest.raises(ValueError, match=r"holds 2 image\(s\) but no class sub-folders.*<class_name>"):
        load_dataset(str(tmp_path))


def test_non_image_files_skipped_and_a_class_of_them_refused(tmp_path):
    _png(tmp_path / "a" / "x.png", _rgb(0))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1")
    _png(tmp_path / "b" / "y.jpg", _rgb(1))
    ds = load_dataset(str(tmp_path))
    assert ds.labels.tolist() == [0, 1]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.md").write_text("#")
    with pytest.raises(ValueError, match=r"class folder .*'.*c'.* has no images"):
        load_dataset(str(tmp_path))


def test_truncated_image_names_the_file(tmp_path):
    import io

    from PIL import Image

    _png(tmp_path / "a" / "x.png", _rgb(0))
    buf = io.BytesIO()
    Image.fromarray(_rgb(1, 32, 32)).save(buf, format="PNG")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cut.png").write_bytes(buf.getvalue()[:-40])  # header fine, data cut short
    with pytest.raises(ValueError, match=r"could not read image .*cut\.png.*fix or remove"):
        load_dataset(str(tmp_path))


def test_mixed_sizes_and_modes_are_resized_and_converted(tmp_path):
    _png(tmp_path / "a" / "0.png", _rgb(0, 6, 4))                          # first: sets the size
    _png(tmp_path / "a" / "1.png", _rgb(1, 12, 8))                         # larger RGB
    _png(tmp_path / "b" / "2.png", _rgb(2, 3, 2)[..., 0].copy())           # smaller, grayscale
    _png(tmp_path / "b" / "3.png", _gradient16(6, 4))                      # 16-bit, same size
    ds = load_dataset(str(tmp_path))
    assert ds.images.shape == (4, 3, 6, 4) and ds.images.dtype == torch.float32
    assert 0 <= float(ds.images.min()) and float(ds.images.max()) <= 1
    assert torch.equal(ds.images[0], torch.from_numpy(_rgb(0, 6, 4).astype(np.float32) / 255).permute(2, 0, 1))
    # a 2x downscale of a constant image is that constant: the resize keeps the value scale
    _png(tmp_path / "a" / "4.png", np.full((12, 8, 3), 200, dtype=np.uint8))
    ds = load_dataset(str(tmp_path))
    assert torch.allclose(ds.images[2], torch.full((3, 6, 4), 200 / 255), atol=1e-6)
    assert load_dataset(str(tmp_path), image_size=(5, 7)).images.shape == (5, 3, 5, 7)


# -------------------------------------------------------------------------------- label masks
def test_class_with_too_few_nodes_is_named():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ValueError, match=r"class 2 \('zebra'\) has 3.*lower labels_per_class"):
        label_masks(labels, 2, class_names=["ant", "bee", "zebra"])
    with pytest.raises(ValueError, match=r"class 1 has no node"):
        label_masks(torch.tensor([0] * 10 + [2] * 10), 2, num_classes=3)
    # without num_classes a gap is not a class (backward compatible)
    tr, va, te = label_masks(torch.tensor([0] * 10 + [2] * 10), 2)
    assert int(tr.sum()) == 4


def test_mask_without_a_class_is_refused():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    mask = torch.tensor([True, False, True, False, False, False])
    with pytest.raises(ValueError, match=r"train_mask has no labelled node of class 2 \('c'\)"):
        check_every_class_labelled(labels, mask, class_names=["a", "b", "c"])
    mask[4] = True
    check_every_class_labelled(labels, mask)  # every class has one: no error
    with pytest.raises(ValueError, match="class 3"):
        check_every_class_labelled(labels, mask, num_classes=4)


# ------------------------------------------------------------------------------------------ CLI
def _cli(args, capsys):
    """Run ``python -m bgcn train ARGS`` in-process; (exit status, stderr). Parse errors exit too."""
    from bgcn.cli import main

    try:
        code = main(["train"] + args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _tiny(out, epochs=2):
    return ["--dataset", "synthetic", "--synthetic-n", "100", "--k", "5", "--labels-per-class", "3",
            "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--out", str(out)]


def _one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip() and ": warning:" not in ln]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1", str(2**200)])
def test_cli_seed_out_of_range_names_seed(seed, capsys, tmp_path):
    code, err = _cli(_tiny(tmp_path / "r") + ["--seed", seed], capsys)
    line = _one_error_line(err)
    assert code == 2 and "--seed" in line and "2**63 - 1" in line


def test_cli_tiny_tau_names_tau(capsys, tmp_path):
    from bgcn.cli import TAU_MIN, _tau

    code, err = _cli(_tiny(tmp_path / "r") + ["--tau", "1e-300"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "--tau" in line and "tau=1e-300" in line and "1e-08" in line
    assert _tau(str(TAU_MIN)) == TAU_MIN and _tau("auto") == "auto"
    # at the smallest tau the softmax of cosines is still finite in float32, with its gradient
    s = torch.tensor([[1.0, 1.0 - 6e-8, -1.0]], requires_grad=True)
    w = torch.softmax(s / TAU_MIN, dim=-1)
    w[0, 0].backward()
    assert torch.isfinite(w).all() and torch.isfinite(s.grad).all()


def test_cli_warmup_not_below_epochs_names_both(capsys, tmp_path):
    code, err = _cli(_tiny(tmp_path / "r", epochs=4) + ["--warmup-epochs", "4"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "--warmup-epochs 4" in line and "--epochs 4" in line and "never train" in line
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_cli_out_is_a_file_or_under_a_file(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for out, what in ((f, "is a file"), (f / "sub" / "run", "lies under")):
        code, err = _cli(_tiny(out), capsys)
        line = _one_error_line(err)
        assert code == 2 and "--out" in line and what in line and str(f) in line
    assert f.read_text() == "x"


@pytest.mark.parametrize("device", ["mps", "cuda:7"])
def test_cli_missing_device_is_one_line(device, capsys, tmp_path):
    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, err = _cli(_tiny(tmp_path / "r") + ["--device", device], capsys)
    line = _one_error_line(err)
    assert code == 2 and "--device" in line and device in line


def test_cli_resume_without_checkpoint_says_so(capsys, tmp_path):
    code, err = _cli(_tiny(tmp_path / "r") + ["--resume"], capsys)
    assert code == 0, err
    assert "--resume: no checkpoint at" in err and "starts afresh" in err
    assert (tmp_path / "r" / "checkpoint.pt").is_file()
    code, err = _cli(_tiny(tmp_path / "r", epochs=3) + ["--resume"], capsys)  # now it exists: no notice
    assert code == 0 and "starts afresh" not in err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(m["history"]["loss"]) == 3


def _folder(root, n_per_class=(8, 8, 8), size=(12, 12), gray=False):
    for c, n in enumerate(n_per_class):
        for i in range(n):
            a = _rgb(100 * c + i, *size)
            a[..., c % 3] = 255  # a class colour, so there is something to learn
            _png(root / f"class{c}" / f"{i}.png", a[..., 0].copy() if gray else a)
    return root


def test_cli_cnn_digits_on_an_rgb_folder(capsys, tmp_path):
    folder = _folder(tmp_path / "imgs")
    code, err = _cli(["--dataset", str(folder), "--backbone", "cnn_digits", "--labels-per-class", "2",
                      "--k", "3", "--epochs", "2", "--device", "cpu", "--no-progress", "--out",
                      str(tmp_path / "r")], capsys)
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]
    assert cfg["backbone_kwargs"] == {"in_chans": 3} and cfg["image_shape"] == [3, 12, 12]
    assert cfg["class_names"] == ["class0", "class1", "class2"]


@pytest.mark.parametrize("backbone,kwargs", [
    ("vit_tiny_digits", {"in_chans": 3, "img_size": [12, 10]}),   # a non-square folder
    ("mlp_digits", {"in_chans": 3, "img_size": [12, 10]}),
])
def test_cli_registered_backbones_fit_the_folder(backbone, kwargs, capsys, tmp_path):
    folder = _folder(tmp_path / "imgs", size=(12, 10))
    code, err = _cli(["--dataset", str(folder), "--backbone", backbone, "--labels-per-class", "2", "--k", "3",
                      "--epochs", "2", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]["backbone_kwargs"] == kwargs


def test_cli_timm_backbone_on_one_channel_images(capsys, tmp_path):
    code, err = _cli(_tiny(tmp_path / "r") + ["--backbone", "resnet18"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["config"]["backbone_kwargs"] == {"in_chans": 1}
    # a ViT whose 16x16 patches do not fit 8x8 images: one line naming the backbone and the shape
    code, err = _cli(_tiny(tmp_path / "r2") + ["--backbone", "vit_tiny_patch16_224"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "vit_tiny_patch16_224" in line and "(1, 8, 8)" in line


def test_cli_class_too_small_for_the_labels_names_class_and_flag(capsys, tmp_path):
    folder = _folder(tmp_path / "imgs", n_per_class=(8, 8, 3), gray=True)
    code, err = _cli(["--dataset", str(folder), "--labels-per-class", "2", "--k", "3", "--epochs", "2",
                      "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r")], capsys)
    line = _one_error_line(err)
    assert code == 2 and "class 2 ('class2') has 3" in line and "--labels-per-class" in line
    assert not (tmp_path / "r").exists()


def test_cli_one_class_folder_is_one_line(capsys, tmp_path):
    folder = _folder(tmp_path / "imgs", n_per_class=(8,))
    code, err = _cli(["--dataset", str(folder), "--epochs", "2", "--device", "cpu", "--no-progress",
                      "--out", str(tmp_path / "r")], capsys)
    line = _one_error_line(err)
    assert code == 2 and "only one class" in line


@pytest.mark.slow
def test_cli_subprocess_bad_out_is_one_line_no_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    f = tmp_path / "f"
    f.write_text("")
    r = subprocess.run([sys.executable, "-m", "bgcn", "train"] + _tiny(f / "run"), capture_output=True,
                       text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 2, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        f"python -m bgcn train: error: --out {str(f / 'run')!r} lies under {str(f)!r}, which is a file, "
        f"not a folder; give another --out"]
