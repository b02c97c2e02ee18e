"""Using a trained checkpoint: test accuracy with a confusion matrix, and the class of one image.

Images for :func:`load_image` are read as MNIST draws them: a white digit on a black
background, 28x28 pixels. Accepted files:

* ``.png``: grayscale, RGB (converted to gray with the ITU-R 601 weights 0.299, 0.587,
  0.114) or with an alpha channel (transparent pixels count as black background); 8 or
  16 bits per channel.
* ``.npy``: a numeric array of shape (28, 28) or (1, 28, 28) with values in [0, 1], or in
  [0, 255] (any value above 1 means the array is scaled by 1/255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convlab.checkpoints import backends_record, load_checkpoint
from convlab.losses import softmax
from convlab.models import DEFAULT_MODEL, get_model
from convlab.registry import DEFAULT_BACKEND, list_backends
from convlab.settings import layer_backends
from convlab.training import predict_logits

IMAGE_SIZE = (28, 28)
ACCEPTED_FILES = ("a 28x28 grayscale PNG (.png, white digit on black) or a NumPy array (.npy) of shape "
                  "(28, 28) or (1, 28, 28) with values in [0, 1] or [0, 255]")
RGB_TO_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageError(ValueError):
    """An image file that cannot be given to the network."""


def load_model(checkpoint_path, backend=None, batch=None):
    """The network of the checkpoint in ``checkpoint_path``, holding its weights: returns
    (model, checkpoint). See :func:`restore_model`."""
    checkpoint = load_checkpoint(checkpoint_path)
    return restore_model(checkpoint, backend, batch), checkpoint


def restore_model(checkpoint, backend=None, batch=None, data_bytes=0):
    """The network of ``checkpoint`` (loaded), holding its weights.

    The network is the one named by the checkpoint's ``model`` setting (the reference
    network for checkpoints older than that setting). Each conv layer runs on ``backend``
    (one name, or one per conv layer as for ``convlab train``); by default on the one it
    was trained with, or the default backend if that one is not installed here. With
    ``batch``, a network whose forward pass over that many images at once cannot fit in
    the memory available is refused first (:func:`convlab.settings.check_memory`), counting
    ``data_bytes`` more for a data set read after it (``convlab evaluate``).
    """
    model = get_model(checkpoint.settings.get("model", DEFAULT_MODEL))
    if backend is None:
        trained_with = str(checkpoint.settings.get("backends") or checkpoint.settings.get("backend")).split(",")
        backend = ",".join(trained_with) if set(trained_with) <= set(list_backends()) else DEFAULT_BACKEND
    names = layer_backends(model, backend, memory_batch=batch, training=False, data_bytes=data_bytes)  # before it is built
    network = model.build()
    network.set_backends(names)
    checkpoint.restore(network)
    return network


def layer_backend_names(model) -> str:
    """The backends of ``model``'s conv layers: one name if they are all the same, else comma-separated."""
    return backends_record(layer.backend for layer in model.conv_layers())


def confusion_matrix(labels, predictions, classes=10) -> np.ndarray:
    """(classes, classes) counts: entry [t, p] is how many of class t were predicted as p."""
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def evaluation_report(model, checkpoint, x, y, asked=None) -> str:
    """Accuracy and confusion matrix of ``model`` on images x (N, 1, 28, 28), labels y (N,).
    ``asked``: the backends asked for (``auto``), where they are not those ``model`` runs on
    (the ones auto picked), as the header then says: "auto: im2col"."""
    predictions = predict_logits(model, x).argmax(axis=1)
    matrix = confusion_matrix(y, predictions)
    correct = int(np.trace(matrix))
    s = checkpoint.settings
    ran = layer_backend_names(model)
    width = max(5, len(str(matrix.max())) + 1)
    lines = [
        f"checkpoint {checkpoint.path}: {checkpoint.epoch} epoch{'s' * (checkpoint.epoch != 1)} on "
        f"{s['train_size']} {s['dataset']} images, "
        f"trained with {checkpoint.trained_with()}; evaluated with {ran if asked in (None, ran) else f'{asked}: {ran}'}",
        f"test accuracy: {correct / len(y):.4f} ({correct}/{len(y)})",
        "confusion matrix (rows: true class, columns: predicted class, recall: fraction of the row right):",
        "true" + "".join(f"{p:>{width}}" for p in range(len(matrix))) + "  recall",
    ]
    for true_class, row in enumerate(matrix):
        recall = f"{row[true_class] / row.sum():.3f}" if row.sum() else "-"
        lines.append(f"{true_class:>4}" + "".join(f"{n:>{width}}" for n in row) + f"  {recall:>6}")
    return "\n".join(lines)


def load_image(path, invert=False) -> np.ndarray:
    """The image in ``path`` as float32 (1, 28, 28) in [0, 1]; ``invert`` turns a dark digit
    on a light background into MNIST's light on dark. See the module doc for what is accepted."""
    if not str(path).strip():  # Path("") is ".", which "is not a file"; " " a file of that name
        raise ImageError(f"the image's file name is empty ({str(path)!r}); give a .png or .npy file, such as "
                         "digit.png")
    path = Path(str(path))
    if not path.is_file():
        raise ImageError(f"image {path} does not exist" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".png":
        image = read_png(path)
    elif suffix == ".npy":
        image = read_npy(path)
    else:
        raise ImageError(f"{path} is neither a .png nor a .npy file; expected {ACCEPTED_FILES}")
    if image.shape != IMAGE_SIZE:
        raise ImageError(f"{path} is {image.shape[0]} pixels high and {image.shape[1]} wide; the network reads "
                         "28x28 images (resize it, with the digit centred as in MNIST)")
    return (1 - image if invert else image)[None]


def read_png(path: Path) -> np.ndarray:
    """A PNG as float32 (H, W) gray levels in [0, 1]."""
    from matplotlib import image as mpimg

    try:
        pixels = np.asarray(mpimg.imread(path), dtype=np.float32)  # PNGs come back scaled to [0, 1]
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path} is not a readable PNG ({e}); expected {ACCEPTED_FILES}") from None
    if pixels.ndim == 2:
        return pixels
    gray = pixels[..., 0] if pixels.shape[-1] <= 2 else pixels[..., :3] @ RGB_TO_GRAY
    has_alpha = pixels.shape[-1] in (2, 4)
    return gray * pixels[..., -1] if has_alpha else gray


def read_npy(path: Path) -> np.ndarray:
    """A .npy array as float32 (H, W) in [0, 1]."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ImageError(f"{path} is not a readable .npy file ({e}); expected {ACCEPTED_FILES}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "buif":
        raise ImageError(f"{path} does not hold a numeric array; expected {ACCEPTED_FILES}")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.size == 0:
        raise ImageError(f"{path} holds an array of shape {array.shape}; expected {ACCEPTED_FILES}")
    # Checked before the cast to float32: a float64 beyond its range became inf, with
    # numpy's overflow warning printed before the refusal.
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ImageError(f"{path} has values outside [0, 255] (or NaN/inf); expected {ACCEPTED_FILES}")
    array = array.astype(np.float32)
    return array / 255 if array.max() > 1 else array


# An image with fewer pixels than this standing out from its background (by more than
# INK_CONTRAST) holds nothing to classify; MNIST's thinnest digit, a "1", has about 40.
MIN_INK_PIXELS = 8
INK_CONTRAST = 0.25


def check_has_content(image, path, class_name="digit"):
    """Refuse an image (1, 28, 28) in [0, 1] that is blank or nearly so: the network would
    still name a class, with a probability that means nothing."""
    background = float(np.median(image))
    ink = int(np.count_nonzero(np.abs(image - background) > INK_CONTRAST))
    if ink < MIN_INK_PIXELS:
        raise ImageError(f"{path} holds no {class_name}-like content: {ink} pixel(s) stand out from its "
                         f"background ({background:.2f}); a {class_name} needs strokes (at least "
                         f"{MIN_INK_PIXELS} pixels differing by more than {INK_CONTRAST})")
    return image


def prediction_report(model, image, class_name="digit", inverted=False) -> str:
    """The predicted class of ``image`` (1, 28, 28) and all class probabilities, with bars;
    ``inverted``: the image was inverted (``--invert``) before it got here."""
    probabilities = softmax(predict_logits(model, image[None]))[0]
    best = int(probabilities.argmax())
    lines = [f"{class_name}: {best} (probability {probabilities[best]:.4f})"]
    border = np.concatenate([image[0, [0, -1], :].ravel(), image[0, :, [0, -1]].ravel()])
    if border.mean() > 0.5:
        lines.append("note: the image's border is bright; MNIST digits are white on black "
                     + ("(--invert was given: was the digit already light on dark?)" if inverted else
                        "(pass --invert for a dark digit on a light background)"))
    lines += [f"{k:>3}  {p:.4f}  {'#' * round(40 * float(p))}".rstrip() for k, p in enumerate(probabilities)]
    return "\n".join(lines)
