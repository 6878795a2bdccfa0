"""Per-example preprocessing, in TensorFlow: `fn(example, seed) -> model input`.

`seed` is a stateless seed pair unique to the example's stream position, so an
example's crop and flip are a function of (run seed, position) only.

ImageNet's functions take the *encoded* JPEG and return uint8 pixels (`to_pixels`),
which the step normalises on the device. Training decodes only its crop's
pixels (`tf.io.decode_and_crop_jpeg`), yet gets the pixels that decoding the
whole image and cropping it gives (bigbatch decoded whole images with PIL until
it read ImageNet per batch; `tests/data/test_imagenet_input.py` holds the two equal):
- `dct_method="INTEGER_ACCURATE"` is libjpeg's accurate integer IDCT, which PIL
  uses; TF's default (the fast one) is off by up to 5 levels.
- libjpeg-turbo's horizontal crop treats the window's left and right edges as
  the image's when it upsamples 4:2:0 or 4:2:2 chroma, which moves those columns
  by up to 20 levels. Decoding one more column on each side, and dropping it,
  gives the full decode's pixels (checked on 480 random windows, 4:2:0, 4:2:2
  and 4:4:4). Rows need no margin.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

# Per-channel statistics of the training images, in [0, 1] units: CIFAR-10's normalise
# its images here, ImageNet's on the device (`DatasetSpec.device_normalisation`).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_SIZE, IMAGENET_RESIZE = 224, 256


# The random-resized crop of Inception / flax examples/imagenet: the box's area and shape.
RANDOM_CROP = {
  "bounding_boxes": tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
  "min_object_covered": 0.1,
  "aspect_ratio_range": (3 / 4, 4 / 3),
  "area_range": (0.08, 1.0),
  "max_attempts": 10,
  "use_image_if_no_bounding_boxes": True,
}


def normalise(image: tf.Tensor, mean, std) -> tf.Tensor:
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean)) / tf.constant(std)


def to_pixels(image: tf.Tensor) -> tf.Tensor:
  """A resized float image as uint8 pixels: clipped to [0, 255], rounded to the nearest level.

  ImageNet's images leave the host as these and are normalised on the device
  (`bigbatch.step.inputs`): a float32 image is four times the bytes to batch and to
  send, and the host's two normalisation passes (a multiply and a subtract) cost
  about 0.25 ms of a 1.7 ms example on one core (docs/BENCHMARKS.md). Rounding moves a pixel by at most
  half a level, 0.0087 after ImageNet's normalisation.
  """
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def stream_seeds(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
  """`count` distinct stateless seeds from an example's seed pair."""
  return [tf.stack([seed[0], seed[1] * count + i]) for i in range(count)]


def identity(example: Mapping[str, tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
  del seed
  return tf.cast(example["signal"], tf.float32)


def identity_numpy(inputs: np.ndarray) -> np.ndarray:
  """`identity` on a batch in NumPy (the same float32 values)."""
  return np.asarray(inputs, np.float32)


def cifar_train(example: Mapping[str, tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
  """4-pixel zero padding, a random 32x32 crop and a random horizontal flip."""
  crop_seed, flip_seed = stream_seeds(seed, 2)
  image = tf.pad(example["image"], [[4, 4], [4, 4], [0, 0]])
  image = tf.image.stateless_random_crop(image, [32, 32, 3], crop_seed)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return normalise(image, CIFAR10_MEAN, CIFAR10_STD)


def cifar_eval(example: Mapping[str, tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
  del seed
  return normalise(example["image"], CIFAR10_MEAN, CIFAR10_STD)


def decode_window(encoded: tf.Tensor, top, left, height, width, image_width) -> tf.Tensor:
  """Rows [top, top + height) x columns [left, left + width) of a JPEG, as a full decode
  gives them (uint8, 3 channels)."""
  first = tf.maximum(left - 1, 0)  # one column of margin each side: see the module's doc
  last = tf.minimum(left + width + 1, image_width)
  window = tf.io.decode_and_crop_jpeg(
    encoded, tf.stack([top, first, height, last - first]), channels=3, dct_method="INTEGER_ACCURATE"
  )
  return window[:, left - first : left - first + width]


def imagenet_train(
  example: Mapping[str, tf.Tensor], seed: tf.Tensor, size: int = IMAGENET_SIZE
) -> tf.Tensor:
  """Random-resized crop (8-100% of the area, aspect 3/4-4/3) to `size`, random flip: uint8."""
  return to_pixels(imagenet_crop(example, seed, size))


def imagenet_crop(
  example: Mapping[str, tf.Tensor], seed: tf.Tensor, size: int = IMAGENET_SIZE
) -> tf.Tensor:
  """`imagenet_train` before `to_pixels`: float32, not yet clipped to [0, 255] or rounded."""
  box_seed, flip_seed = stream_seeds(seed, 2)
  encoded = example["image"]
  shape = tf.io.extract_jpeg_shape(encoded)
  begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.concat([shape[:2], [3]], 0),  # a greyscale JPEG decodes to 3 channels too
    seed=box_seed,
    **RANDOM_CROP,
  )
  image = decode_window(encoded, begin[0], begin[1], box[0], box[1], shape[1])
  image = tf.image.resize(image, [size, size], method="bicubic")
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def imagenet_eval(
  example: Mapping[str, tf.Tensor], seed: tf.Tensor, size: int = IMAGENET_SIZE
) -> tf.Tensor:
  """Resize the shorter side to size x 256/224, then the centre `size` x `size` crop: uint8.

  This one decodes the whole JPEG. A decode of only the rows and columns the
  centre crop's bicubic taps reach, resampled with the resize kernel's own
  indices and weights, gave the same pixels bit for bit, but was slower on one
  core (3.2 ms against 2.2 ms an example): the centre crop needs about 60% of
  the image, where entropy decoding (which no crop skips) dominates, and the
  resampling took many more TensorFlow ops than `ResizeBicubic`'s one.
  """
  del seed
  image = tf.io.decode_jpeg(example["image"], channels=3, dct_method="INTEGER_ACCURATE")
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = round(size * IMAGENET_RESIZE / IMAGENET_SIZE) / tf.reduce_min(shape)
  image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), method="bicubic")
  image = tf.image.resize_with_crop_or_pad(image, size, size)
  return to_pixels(image)
