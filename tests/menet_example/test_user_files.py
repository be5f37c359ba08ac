"""Files as users have them: phone photos (EXIF), transparency, greyscale, earlier results.

Each test here reproduces a defect of issue 27 (what 1): sideways phone photos, silently
overwritten results and runs, an unusable ``--out`` found only after the model ran, alpha
and greyscale lost, PyTorch's unpickling advice for a JPEG given as ``--weights``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from torch import Tensor, nn

import menet.cli as mcli
import menet.train as mtrain
from menet.checkpoint import export_weights, load_checkpoint
from menet.cli import main
from menet.derain import count_tiles, derain_files, derain_image
from menet.images import _UPRIGHT, read_image, read_photo, write_image
from menet.model import MENET

ORIENTATION = 0x0112


class Scale(nn.Module):
    """A stand-in model that multiplies each colour channel by its own factor."""

    def __init__(self, factors: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.f: Tensor
        self.register_buffer("f", torch.tensor(factors).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.f).clamp(0, 1)


def pattern(h: int, w: int, channels: int = 3) -> np.ndarray:
    """Distinct uint8 values at every pixel, so any rotation or flip is visible."""
    a = np.arange(h * w * channels, dtype=np.int64).reshape(h, w, channels)
    return ((a * 7) % 251).astype(np.uint8)


def exif_bytes(orientation: int, make: str = "RainCam", size: tuple[int, int] = (0, 0)) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = make  # Make
    if size != (0, 0):  # PixelXDimension, PixelYDimension of the stored pixels
        exif.get_ifd(0x8769).update({0xA002: size[0], 0xA003: size[1]})
    return exif.tobytes()


# ----------------------------------------------------------------------------- EXIF


def test_orientation_6_is_turned_upright_on_reading(tmp_path: Path) -> None:
    """Orientation 6 means: rotate the stored pixels 90 degrees clockwise to display them."""
    stored = pattern(2, 3)
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif_bytes(6))
    upright = (read_image(tmp_path / "phone.png") * 255).round().byte().permute(1, 2, 0).numpy()
    # Clockwise by hand: the stored bottom-left pixel becomes the displayed top-left one.
    expected = np.stack([stored[::-1, j] for j in range(3)])
    assert upright.shape == (3, 2, 3)
    np.testing.assert_array_equal(upright, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_16_bit_tiff_path_turns_arrays_as_pillow_turns_images(orientation: int) -> None:
    from PIL import ImageOps

    stored = pattern(3, 5)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[ORIENTATION] = orientation
    im.info["exif"] = exif.tobytes()
    by_pillow = np.asarray(ImageOps.exif_transpose(im))
    ours = _UPRIGHT[orientation](stored) if orientation in _UPRIGHT else stored
    np.testing.assert_array_equal(ours, by_pillow)


def test_a_16_bit_tiff_with_orientation_is_read_upright(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    stored = (pattern(4, 6).astype(np.uint16) * 257).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", stored, photometric="rgb",
                     extratags=[(274, "H", 1, 8, True)])  # Orientation 8: 90 degrees anticlockwise
    got = (read_image(tmp_path / "x.tif") * 65535).round().to(torch.int64).permute(1, 2, 0)
    np.testing.assert_array_equal(got.numpy(), np.rot90(stored, 1).astype(np.int64))


def test_derain_writes_the_photo_upright_with_its_exif_and_colour_profile(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "in" / "phone.jpg"
    src.parent.mkdir()
    Image.fromarray(pattern(24, 40)).save(src, exif=exif_bytes(6, size=(40, 24)), icc_profile=icc,
                                          quality=95)
    report = derain_files(Scale(), [src], tmp_path / "out", tile=None)
    assert report.ok, report.failed
    with Image.open(tmp_path / "out" / "phone.jpg") as im:
        assert im.size == (24, 40)  # upright: portrait
        exif = im.getexif()
        assert exif.get(0x010F) == "RainCam"
        assert exif.get(ORIENTATION, 1) == 1  # the pixels are upright: no turn left to do
        assert exif.get_ifd(0x8769) == {0xA002: 24, 0xA003: 40}  # the upright size
        assert im.info.get("icc_profile") == icc
    # The identity model returns the upright photo (JPEG: within a few levels).
    upright = read_image(src)
    assert upright.shape == (3, 40, 24)
    diff = (read_image(tmp_path / "out" / "phone.jpg") - upright).abs().mean()
    assert float(diff) < 6 / 255


# ----------------------------------------------------------------------------- alpha, grey


def test_alpha_is_kept_and_the_colour_de_rained_without_compositing(tmp_path: Path) -> None:
    rgba = pattern(10, 12, 4)
    rgba[..., 3] = np.linspace(0, 255, 12).astype(np.uint8)[None, :]  # 0 (clear) to 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    report = derain_files(Scale((0.5, 0.5, 0.5)), [tmp_path / "logo.png"], tmp_path / "o",
                          tile=None)
    assert report.ok, report.failed
    with Image.open(tmp_path / "o" / "logo.png") as im:
        assert im.mode == "RGBA"
        out = np.asarray(im)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    # The stored colour halved, even where transparent (no white composite).
    expected = np.round(rgba[..., :3].astype(np.float64) / 255 * 0.5 * 255)
    np.testing.assert_allclose(out[..., :3], expected, atol=1)


@pytest.mark.parametrize(("mode", "suffix"), [("L", ".png"), ("L", ".jpg"), ("LA", ".png")])
def test_greyscale_comes_back_as_greyscale(tmp_path: Path, mode: str, suffix: str) -> None:
    grey = pattern(16, 20, 2)
    Image.fromarray(grey if mode == "LA" else grey[..., 0], mode).save(tmp_path / f"g{suffix}")
    factors = (0.9, 1.0, 1.2)  # a model that tints: the file must still be grey
    report = derain_files(Scale(factors), [tmp_path / f"g{suffix}"], tmp_path / "o", tile=None)
    assert report.ok, report.failed
    with Image.open(tmp_path / "o" / f"g{suffix}") as im:
        assert im.mode == mode
        out = np.asarray(im).astype(np.float64)
    v = read_photo(tmp_path / f"g{suffix}").rgb[0].numpy().astype(np.float64)
    luma = sum(w * np.clip(v * f, 0, 1) for w, f in zip((0.299, 0.587, 0.114), factors,
                                                         strict=True))
    tol = 1 if suffix == ".png" else 8  # JPEG: re-encoding a noisy pattern
    np.testing.assert_allclose(out if mode == "L" else out[..., 0], luma * 255, atol=tol)
    if mode == "LA":
        np.testing.assert_array_equal(out[..., 1], grey[..., 1])


def test_a_16_bit_rgba_png_stays_16_bit_with_its_alpha(tmp_path: Path) -> None:
    x = torch.rand(4, 9, 7)
    write_image(x, tmp_path / "a.png", bits=16)
    p = read_photo(tmp_path / "a.png")
    assert p.bits == 16 and p.alpha is not None and not p.grey
    derain_files(Scale(), [tmp_path / "a.png"], tmp_path / "o", tile=None)
    q = read_photo(tmp_path / "o" / "a.png")
    assert q.bits == 16 and q.alpha is not None
    torch.testing.assert_close(q.alpha, p.alpha)


# ----------------------------------------------------------------------------- derain progress


def test_derain_progress_counts_tiles_within_one_large_image(tmp_path: Path) -> None:
    write_image(torch.rand(3, 300, 200), tmp_path / "big.png")
    seen: list[int] = []
    derain_image(Scale(), torch.rand(3, 300, 200), tile=128, overlap=32,
                 on_tile=lambda: seen.append(1))
    assert len(seen) == count_tiles(300, 200, 128, 32) > 1
    err = io.StringIO()
    import menet.derain as mderain

    bars: list[object] = []
    real = mderain.tqdm  # type: ignore[attr-defined]

    def spy(*args: object, **kwargs: object) -> object:
        bar = real(*args, **{**kwargs, "file": err})
        bars.append(bar)
        return bar

    mp = pytest.MonkeyPatch()
    mp.setattr(mderain, "tqdm", spy)
    try:
        derain_files(Scale(), [tmp_path / "big.png"], tmp_path / "o", tile=128, overlap=32,
                     progress=True)
    finally:
        mp.undo()
    assert bars[0].total == len(seen) and bars[0].n == len(seen)  # type: ignore[attr-defined]
    assert f"{len(seen)}/{len(seen)}" in err.getvalue()


# ----------------------------------------------------------------------------- the command line


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_weights(MENET.variant("shallow"), tmp_path / "w" / "model.safetensors",
                          "shallow")


def one_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def derain(*args: str) -> int:
    return main(["derain", *args, "--device", "cpu", "--no-progress"])


@pytest.mark.slow
def test_derain_never_overwrites_a_result_unless_forced(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "photos", tmp_path / "out"
    write_image(torch.rand(3, 20, 24), src / "a.png")
    assert derain(str(src), "--weights", str(weights), "--out", str(out)) == 0
    before = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"my edited result")
    capsys.readouterr()
    assert derain(str(src), "--weights", str(weights), "--out", str(out)) == 2
    one_line(capsys, "1 result(s) already exist", str(out / "a.png"), "--force", "--skip-existing")
    assert (out / "a.png").read_bytes() == b"my edited result"
    # --skip-existing: the new photo only
    write_image(torch.rand(3, 20, 24), src / "b.png")
    assert derain(str(src), "--weights", str(weights), "--out", str(out), "--skip-existing") == 0
    said = capsys.readouterr().out
    assert "de-rained 1 image(s)" in said and "(1 kept: already there)" in said, said
    assert (out / "a.png").read_bytes() == b"my edited result" and (out / "b.png").is_file()
    # --force: replaced
    assert derain(str(src), "--weights", str(weights), "--out", str(out), "--force") == 0
    assert (out / "a.png").read_bytes() == before


@pytest.mark.slow
def test_a_new_training_run_never_replaces_an_old_one_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    tiny = ["train", "--synthetic", "light", "--steps", "1", "--patch-size", "32",
            "--batch-size", "2", "--variant", "shallow", "--no-progress", "--out", str(out)]
    assert main(tiny) == 0
    ckpt = (out / "last.ckpt").read_bytes()
    capsys.readouterr()
    assert main(tiny) == 2
    one_line(capsys, "menet train:", str(out / "last.ckpt"), "--resume", "--force")
    assert (out / "last.ckpt").read_bytes() == ckpt
    assert main([*tiny, "--force"]) == 0


@pytest.mark.slow
def test_evaluate_never_overwrites_its_results_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ev"
    args = ["evaluate", "--input-only", "--synthetic", "light", "--images", "chelsea",
            "--protocol", "standard", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    one_line(capsys, "menet evaluate:", "summary.json", "--force")
    assert main([*args, "--force"]) == 0


@pytest.mark.parametrize("command", ["derain", "evaluate", "train"])
@pytest.mark.parametrize("bad", ["file", "under-a-file"])
def test_a_bad_out_is_one_line_before_any_model_work(
    command: str, bad: str, weights: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(mcli, "_load_weights", no_model)
    monkeypatch.setattr(mtrain, "open_session", no_model)  # train() checks --out first
    (tmp_path / "taken.txt").write_text("a file")
    out = tmp_path / "taken.txt" if bad == "file" else tmp_path / "taken.txt" / "sub"
    write_image(torch.rand(3, 8, 8), tmp_path / "a.png")
    argv = {
        "derain": ["derain", str(tmp_path / "a.png"), "--weights", str(weights)],
        "evaluate": ["evaluate", "--synthetic", "light", "--images", "chelsea"],
        "train": ["train", "--synthetic", "light", "--steps", "1"],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    words = ["is an existing file, not a folder"] if bad == "file" else ["is not writable",
                                                                         "Not a directory"]
    one_line(capsys, f"menet {command}:", str(out), *words)


def test_a_jpeg_as_weights_is_one_line_without_unpickling_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(pattern(8, 8)).save(tmp_path / "photo.jpg")
    assert derain(str(tmp_path / "photo.jpg"), "--weights", str(tmp_path / "photo.jpg"),
                  "--out", str(tmp_path / "o")) == 2
    err = one_line(capsys, "photo.jpg", "is not a MENET checkpoint or weights file",
                   "a JPEG image")
    assert "weights_only" not in err and "arbitrary code" not in err


@pytest.mark.slow
def test_outputs_are_readable_by_everyone(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(["train", "--synthetic", "light", "--steps", "1", "--patch-size", "32",
                     "--batch-size", "2", "--variant", "shallow", "--no-progress",
                     "--out", str(out)]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    for name in ("model.safetensors", "model.json", "last.ckpt", "log.csv"):
        assert modes[name] == 0o644, modes


# ----------------------------------------------------------------------------- figures


def _white_rows(path: Path) -> float:
    """The longest run of all-white pixel rows inside the figure, as a fraction of its height."""
    arr = np.asarray(Image.open(path).convert("L"))
    white = [bool(v) for v in np.all(arr >= 250, axis=1).tolist()]
    inside = [i for i, w in enumerate(white) if not w]
    longest = run = 0
    for w in white[inside[0] : inside[-1] + 1]:
        run = run + 1 if w else 0
        longest = max(longest, run)
    return longest / len(arr)


def test_the_grid_leaves_no_blank_band_after_a_portrait_row(tmp_path: Path) -> None:
    from menet.evaluate import save_grid

    portrait, landscape = torch.rand(3, 90, 40), torch.rand(3, 40, 90)
    rows = [(portrait,) * 3, (landscape,) * 3, (landscape,) * 3]
    save_grid(rows, tmp_path / "grid.png", row_labels=["tall", "wide", "wide"])
    assert _white_rows(tmp_path / "grid.png") < 0.08


def test_the_evaluate_grid_labels_each_row_with_its_name_and_psnr(
    rain100l_folder: Path,
) -> None:
    from menet.data import PairedFolder

    data = PairedFolder(rain100l_folder)
    rows, labels = mcli._grid_rows(Scale((0.9, 0.9, 0.9)), data)
    assert len(rows) == len(labels) == 3
    def y_psnr(x: Tensor, clean: Tensor) -> float:  # BT.601 luma on 0..255 (standard protocol)
        q = np.round(x.numpy().astype(np.float64) * 255)
        c = np.round(clean.numpy().astype(np.float64) * 255)
        w = np.array([65.481, 128.553, 24.966])[:, None, None] / 255
        mse = np.mean(((q * w).sum(0) - (c * w).sum(0)) ** 2)
        return float(10 * np.log10(255**2 / mse))

    for (rainy, derained, clean), name, label in zip(rows, data.names[:3], labels, strict=True):
        expected = f"{y_psnr(rainy, clean):.1f} -> {y_psnr(derained, clean):.1f} dB (Y)"
        assert label == f"{name}\n{expected}"


def test_legends_sit_below_the_plot_not_on_the_curves() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from menet.plots import legend_below

    fig, ax = plt.subplots()
    x = np.linspace(0, 1, 50)
    for k in range(5):
        ax.plot(x, x**k, label=f"curve {k}")
    twin = ax.twinx()
    twin.plot(x, 1 - x, label="learning rate")
    legend = legend_below(ax, twin)
    fig.canvas.draw()
    box, plot = legend.get_window_extent(), ax.get_window_extent()
    assert box.y1 < plot.y0, (box, plot)  # entirely below the axes
    assert len(legend.get_texts()) == 6
    plt.close(fig)


@pytest.mark.slow
def test_resume_says_where_it_resumes_and_what_this_sitting_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from menet.config import TrainConfig

    class StopError(Exception):
        pass

    def stop(epoch: int, step: int) -> None:
        raise StopError

    out = tmp_path / "run"
    config = TrainConfig(synthetic="light", patch_size=32, batch_size=6, variant="shallow",
                         epochs=2, out=str(out), progress=False)
    with pytest.raises(StopError):  # a crash after the first epoch's checkpoint
        mtrain.train(config, on_epoch_end=stop)
    capsys.readouterr()
    n = load_checkpoint(out / "last.ckpt")["step"]  # one epoch's steps
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    said = capsys.readouterr()
    assert f"menet train: resuming from step {n} of {2 * n} (epoch 2) in {out / 'last.ckpt'}" \
        in said.err
    line = said.out.splitlines()[0]
    assert line.startswith(f"trained {2 * n} steps (2 epochs) in "), line
    assert (f"over all sittings; this sitting resumed from step {n} and trained steps "
            f"{n + 1}-{2 * n} in ") in line
    sitting = float(line.rsplit(" in ", 1)[1].split()[0])
    total = float(line.split(" in ", 1)[1].split()[0])
    assert sitting <= total


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_the_training_bar_fits_an_80_column_terminal_and_shows_the_weights(
    tmp_path: Path,
) -> None:
    import fcntl
    import pty
    import re
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "menet", "train", "--synthetic", "light", "--steps", "3",
         "--patch-size", "32", "--batch-size", "2", "--variant", "shallow",
         "--out", str(tmp_path / "run")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    lines = [p for p in re.split(r"[\r\n]|\x1b\[A", text) if p.strip()]
    bars = [p for p in lines if re.search(r"\d+/3 \[", p)]
    status = [p for p in lines if p.startswith("weights ")]
    assert bars and status, lines
    for line in bars + status:
        assert len(line) <= 80, line
    assert all(len(b.split("|")[1]) >= 30 for b in bars), bars  # the bar itself keeps its width
    weights = r"weights pixel \d\.\d\d edge \d\.\d\d texture \d\.\d\d"
    assert all(re.match(weights, s) for s in status), status


@pytest.mark.slow
def test_the_menet_console_script_is_the_cli() -> None:
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).parent / "menet"
    if not script.is_file():
        found = shutil.which("menet")
        if found is None:
            pytest.skip("the menet package is installed without its console script")
        script = Path(found)
    proc = subprocess.run([str(script), "derain", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: menet derain ")
    assert "--skip-existing" in proc.stdout
