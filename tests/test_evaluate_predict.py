"""`convlab evaluate` (accuracy, confusion matrix) and `convlab predict` (one image), with
the files each accepts and the errors for the ones it does not."""

import numpy as np
import pytest
from PIL import Image

import convlab
import convlab.data
from convlab.inference import confusion_matrix, load_image
from convlab.losses import softmax
from convlab.training import accuracy
from tests.test_checkpoints import make_checkpoint
from tests.test_cli import run_cli


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), classes=3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_evaluate_prints_accuracy_and_confusion_matrix_under_any_backend(capsys, tmp_path, data_read_once):
    path = tmp_path / "ck.h5"
    model, _, _ = make_checkpoint(path)
    data = convlab.data.load_dataset("mnist")
    expected = accuracy(model, data.x_test[:150], data.y_test[:150])
    outputs = {}
    for backend in ("im2col", "naive"):
        code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(path), "--test-size", "150",
                                 "--backend", backend)
        assert code == 0, err
        outputs[backend] = out.splitlines()
    lines = outputs["naive"]
    assert lines[0] == (f"checkpoint {path}: 1 epoch on 256 mnist images, trained with im2col; "
                        "evaluated with naive")
    assert lines[1] == f"test accuracy: {expected:.4f} ({round(expected * 150)}/150)"
    assert lines[3].split() == ["true", *map(str, range(10)), "recall"]
    matrix = np.array([line.split()[1:11] for line in lines[4:14]], dtype=int)
    assert [int(line.split()[0]) for line in lines[4:14]] == list(range(10))
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(data.y_test[:150], minlength=10))
    assert np.trace(matrix) == round(expected * 150)
    assert outputs["im2col"][1:] == lines[1:]


def test_evaluate_and_predict_on_auto_say_what_it_picked(capsys, tmp_path, monkeypatch, data_read_once, digit):
    """As train does: auto's line and the conv layer's, and the header names the pick. One
    pick per layer at the evaluation's batch (128), not another for its last 22 images."""
    import backends.auto as auto_module

    monkeypatch.setattr(auto_module, "strategies", lambda: ["naive", "im2col"])
    monkeypatch.setattr(convlab.get_backend("auto").impl, "_picks", {})
    monkeypatch.setenv("CONVLAB_AUTO_CACHE", str(tmp_path / "auto.json"))
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(path), "--test-size", "150", "--backend", "auto")
    assert code == 0, err
    lines = out.splitlines()
    picked = convlab.get_backend("auto").impl.picks
    assert len(picked) == 1 and next(iter(picked)).startswith("x 128x1x28x28 ")  # the batch of 22 used it too
    (name,) = picked.values()
    assert lines[0].startswith(f"auto picked {name} for x 128x1x28x28 w 32x1x7x7 ")
    assert lines[1] == f"conv layer 1 (conv 1 -> 32 filters 7x7, stride 1, padding 1, on 28x28): {name} (picked by auto)"
    assert lines[2].endswith(f"trained with im2col; evaluated with auto: {name}")
    np.save(tmp_path / "digit.npy", digit)
    code, out, err = run_cli(capsys, "predict", "--checkpoint", str(path), str(tmp_path / "digit.npy"),
                             "--backend", "auto")
    assert code == 0, err
    lines = out.splitlines()
    (name,) = [pick for key, pick in convlab.get_backend("auto").impl.picks.items() if key.startswith("x 1x1x28x28 ")]
    assert lines[0].startswith(f"auto picked {name} for x 1x1x28x28 ")
    assert lines[1].endswith(f"on 28x28): {name} (picked by auto)") and lines[2].startswith("digit: ")


@pytest.mark.parametrize("argv, message", [
    ([], "--checkpoint is required: the file `convlab train --checkpoint` saves"),
    (["--test-size", "0"], "--test-size must be a positive whole number, got 0"),
    (["--test-size", "20000"], "--test-size is 20000 but the data set has only 10000 images"),
    (["--backend", "nope"], "--backend: unknown backend 'nope' in 'nope' (give one backend for every conv layer, "
                            "or one per conv layer, comma-separated, from: auto, "),
    (["--backend", "im2col,"], "--backend: empty name in 'im2col,' (give one backend for every conv layer, or one "
                               "per conv layer, comma-separated, from: auto, "),
])
def test_evaluate_bad_arguments(capsys, tmp_path, data_read_once, argv, message):
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    checkpoint = ["--checkpoint", str(path)] if argv else []
    code, _, err = run_cli(capsys, "evaluate", *checkpoint, *argv)
    assert code == 2 and err.startswith(f"convlab: error: {message}") and err.count("\n") == 1


@pytest.fixture
def digit():
    """A 28x28 uint8 image: a bright bar on black, with some texture."""
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = np.random.default_rng(0).integers(128, 256, (20, 4))
    return image


def image_files(tmp_path, digit):
    """The same image in every accepted form: {file name: extra options}."""
    gray = digit.astype(np.uint16) * 257
    Image.fromarray(digit).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([digit] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([digit, digit, digit, np.full_like(digit, 255)])).save(tmp_path / "rgba.png")
    opaque = np.where(digit > 0, 255, 0).astype(np.uint8)  # the digit on a transparent background stored white
    Image.fromarray(np.dstack([np.where(opaque > 0, digit, 255)] * 3 + [opaque])).save(tmp_path / "transparent.png")
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    Image.fromarray(digit).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(255 - digit).save(tmp_path / "dark-on-light.png")
    np.save(tmp_path / "uint8.npy", digit)
    np.save(tmp_path / "float01.npy", (digit / 255.0)[None])
    np.save(tmp_path / "float255.npy", digit.astype(np.float64))
    return {"gray.png": [], "rgb.png": [], "rgba.png": [], "transparent.png": [], "gray16.png": [], "palette.png": [],
            "dark-on-light.png": ["--invert"], "uint8.npy": [], "float01.npy": [], "float255.npy": []}


def test_predict_gives_the_same_answer_for_every_accepted_file(capsys, tmp_path, digit):
    path = tmp_path / "ck.h5"
    model, _, _ = make_checkpoint(path)
    probabilities = softmax(model.forward((digit / np.float32(255))[None, None]))[0]
    best = int(probabilities.argmax())
    for name, options in image_files(tmp_path, digit).items():
        np.testing.assert_allclose(load_image(tmp_path / name, invert=bool(options))[0], digit / 255, atol=1e-6)
        code, out, err = run_cli(capsys, "predict", "--checkpoint", str(path), str(tmp_path / name), *options)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"digit: {best} (probability {probabilities[best]:.4f})", name
        assert [line.split()[:2] for line in lines[1:]] == [[str(k), f"{p:.4f}"] for k, p in enumerate(probabilities)]


def test_predict_notes_a_dark_digit_on_a_light_background(capsys, tmp_path, digit):
    make_checkpoint(tmp_path / "ck.h5")
    Image.fromarray(255 - digit).save(tmp_path / "inverted.png")
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck.h5"), str(tmp_path / "inverted.png"))
    assert code == 0 and "note: the image's border is bright; MNIST digits are white on black (pass --invert" in out
    # The same note for a light digit on dark given --invert must not tell the user to pass it.
    Image.fromarray(digit).save(tmp_path / "light-on-dark.png")
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck.h5"), "--invert", "yes",
                           str(tmp_path / "light-on-dark.png"))
    assert code == 0 and "(--invert was given: was the digit already light on dark?)" in out


def write_npy(array):
    return lambda path: np.save(path, array)


def write_npz(path):
    with open(path, "wb") as f:  # np.savez would add ".npz" to the name
        np.savez(f, x=np.zeros((28, 28)))


ACCEPTED = ("expected a 28x28 grayscale PNG (.png, white digit on black) or a NumPy array (.npy) of shape "
            "(28, 28) or (1, 28, 28) with values in [0, 1] or [0, 255]")
BAD_IMAGES = {
    "missing.png": (None, "image {path} does not exist"),
    "folder.png": (lambda path: path.mkdir(), "{path} is not a file"),
    "digit.jpg": (lambda path: Image.new("L", (28, 28)).save(path, "JPEG"),
                  "{path} is neither a .png nor a .npy file; " + ACCEPTED),
    "digit.txt": (lambda path: path.write_text("7"), "{path} is neither a .png nor a .npy file"),
    "text.png": (lambda path: path.write_text("not an image"), "{path} is not a readable PNG ("),
    "big.png": (lambda path: Image.new("L", (32, 30)).save(path),
                "{path} is 30 pixels high and 32 wide; the network reads 28x28 images "
                "(resize it, with the digit centred as in MNIST)"),
    "rgb-big.png": (lambda path: Image.new("RGB", (56, 56)).save(path), "{path} is 56 pixels high and 56 wide"),
    "batch.npy": (write_npy(np.zeros((3, 28, 28))), "{path} holds an array of shape (3, 28, 28); " + ACCEPTED),
    "flat.npy": (write_npy(np.zeros(784)), "{path} holds an array of shape (784,)"),
    "small.npy": (write_npy(np.zeros((14, 14))), "{path} is 14 pixels high and 14 wide; the network reads 28x28"),
    "too-bright.npy": (write_npy(np.full((28, 28), 300.0)),
                       "{path} has values outside [0, 255] (or NaN/inf); " + ACCEPTED),
    "negative.npy": (write_npy(-np.ones((28, 28))), "{path} has values outside [0, 255]"),
    "nan.npy": (write_npy(np.full((28, 28), np.nan)), "{path} has values outside [0, 255] (or NaN/inf)"),
    # "zero-size array to reduction operation minimum which has no identity", naming no file
    "empty.npy": (write_npy(np.zeros((0, 28))), "{path} holds an array of shape (0, 28); " + ACCEPTED),
    # numpy's "overflow encountered in cast" warning came first, on a line of its own
    "beyond-float32.npy": (write_npy(np.full((28, 28), 1e300)), "{path} has values outside [0, 255] (or NaN/inf)"),
    "strings.npy": (write_npy(np.full((28, 28), "a")), "{path} does not hold a numeric array; " + ACCEPTED),
    "objects.npy": (lambda path: np.save(path, np.array([None] * 784).reshape(28, 28), allow_pickle=True),
                    "{path} is not a readable .npy file (Object arrays cannot be loaded when allow_pickle=False)"),
    "zip.npy": (write_npz, "{path} does not hold a numeric array"),
    "truncated.npy": (lambda path: (np.save(path, np.zeros((28, 28))), path.write_bytes(path.read_bytes()[:200])),
                      "{path} is not a readable .npy file ("),
}


@pytest.mark.parametrize("name", ["", " "])
def test_predict_refuses_an_empty_file_name(capsys, tmp_path, name):
    """It said ". is not a file" (Path("") is ".") and "image   does not exist"."""
    make_checkpoint(tmp_path / "ck.h5")
    code, out, err = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck.h5"), name)
    assert code == 2 and out == ""
    assert err == (f"convlab: error: the image's file name is empty ({name!r}); give a .png or .npy file, such as "
                   "digit.png\n")


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_predict_rejects_a_bad_image_with_one_line(capsys, tmp_path, name):
    make_checkpoint(tmp_path / "ck.h5")
    write, message = BAD_IMAGES[name]
    path = tmp_path / name
    if write is not None:
        write(path)
    code, out, err = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck.h5"), str(path))
    assert code == 2 and out == ""
    assert err.startswith("convlab: error: " + message.format(path=path)), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{ck}"], "FILE is required: the image to classify, a 28x28 grayscale PNG (.png, white digit "
                               "on black) or a NumPy array (.npy) of shape (28, 28) or (1, 28, 28) with values in "
                               "[0, 1] or [0, 255]; as in `convlab predict --checkpoint {ck} digit.png`"),
    ([], "FILE is required: the image to classify, a 28x28 grayscale PNG (.png, white digit on black) or a NumPy "
         "array (.npy) of shape (28, 28) or (1, 28, 28) with values in [0, 1] or [0, 255]; as in `convlab predict "
         "--checkpoint run.h5 digit.png`"),
    (["{image}"], "--checkpoint is required: the file `convlab train --checkpoint` saves"),
    (["--checkpoint", "{image}", "{image}"], "{image} is not an HDF5 file"),
    (["--checkpoint", "{ck}", "{image}", "--invert", "maybe"], "--invert takes yes or no (also true/false, on/off, 1/0), got 'maybe'"),
])
def test_predict_bad_arguments(capsys, tmp_path, digit, argv, message):
    ck, image = tmp_path / "ck.h5", tmp_path / "digit.npy"
    make_checkpoint(ck)
    np.save(image, digit)
    code, _, err = run_cli(capsys, "predict", *[a.format(ck=ck, image=image) for a in argv])
    assert code == 2 and err.startswith(f"convlab: error: {message.format(ck=ck, image=image)}") and err.count("\n") == 1
