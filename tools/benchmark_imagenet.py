"""ImageNet input: bigbatch's pipeline against a flax examples/imagenet-style one, same JPEGs.

usage: python tools/benchmark.py --imagenet-input [--repeats 2] [--imagenet-dir DIR] [--out DIR]

Contenders, each producing training batches of 128 224x224x3 images with a
random-resized crop and a flip:

  bigbatch  `bigbatch.data.train_batches` on the ArrayRecord files: the
            position-indexed stream, one read per batch in a reader process,
            decode of the crop only in tf.data, uint8 pixels out (the train
            step normalises them on the device).
  flax      flax's examples/imagenet input pipeline on the TFRecord files of
            the same images: interleave, shuffle, extract_jpeg_shape +
            sample_distorted_bounding_box + decode_and_crop_jpeg, flip,
            normalise, batch, AUTOTUNE (tf.data's default thread pool).
  previous  bigbatch before per-batch reads: one `tf.numpy_function` per example
            that reads the record and decodes the whole JPEG with PIL; float32.
  bigbatch-float32  bigbatch's pipeline normalising on the host, float32 out,
            as before it shipped uint8: what shipping uint8 saves the host.

Every measurement is a fresh process whose CPU affinity is set before
TensorFlow starts (its reader processes inherit it): pinned to one core, and
on all the cores this process may use. Measurements are interleaved (A B C, C
B A, ...) and each reports examples/s after a warm-up, and also
examples per CPU-second of the process and its readers (which another load on
the machine neither lends nor takes, unlike wall time). Then, on all cores,
py-spy samples the training process (`--gil`: only samples in which a thread
holds the GIL) while it consumes batches; GIL-held time per example is the
GIL-held fraction over examples/s, and 1 / that is the most examples/s one
process can deliver whatever its core count.

The images (5,000 training JPEGs, ~110 KB, ImageNet's sizes) are made by
tools/fake_imagenet.py and prepared by tfds's imagenet2012 builder in both
formats, once, under --imagenet-dir. Writes imagenet_input.json and
imagenet_input.md to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONTENDERS = ("bigbatch", "flax", "previous", "bigbatch-float32")
BATCH, WARMUP, COUNT, GIL_SECONDS, GIL_RATE = 128, 4, 12, 6, 200
MEAN_RGB, STDDEV_RGB = (
  (0.485 * 255, 0.456 * 255, 0.406 * 255),
  (0.229 * 255, 0.224 * 255, 0.225 * 255),
)


def default_dir() -> str:
  return os.path.join(tempfile.gettempdir(), "bigbatch-fake-imagenet")


def ensure_data(root: str, train: int = 5000, val: int = 100) -> None:
  """Both formats of the fake ImageNet under `root` (made once; ~2 minutes on 2 cores)."""
  if all(
    os.path.exists(os.path.join(root, f, "imagenet2012")) for f in ("array_record", "tfrecord")
  ):
    return
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import fake_imagenet

  manual = pathlib.Path(root) / "downloads" / "manual"
  fake_imagenet.write_manual_archives(manual, train=train, val=val)
  for file_format in ("array_record", "tfrecord"):
    fake_imagenet.prepare(os.path.join(root, file_format), manual, file_format)


# ---- the contenders (run inside a worker process) ----


def bigbatch_batches(root: str, steps: int, float32: bool = False):
  import dataclasses

  import tensorflow as tf

  from bigbatch import data
  from bigbatch.data import preprocess
  from bigbatch.step import inputs

  source = data.load_split(
    {"name": "imagenet2012", "data_dir": os.path.join(root, "array_record")}, "train"
  )
  spec = data.dataset_spec("imagenet2012")
  if float32:  # the host's normalisation before uint8 out: one multiply, one subtract
    scale, shift = inputs.scale_and_shift(spec.device_normalisation)

    def normalised(example, seed):
      image = tf.clip_by_value(preprocess.imagenet_crop(example, seed), 0.0, 255.0)
      return image * scale - shift

    spec = dataclasses.replace(spec, train_preprocess=normalised)
  return data.train_batches(
    source, spec, seed=0, batch_size=BATCH, start_position=0, num_steps=steps
  )


def _flax_center_crop(image_bytes, size: int):
  import tensorflow as tf

  shape = tf.io.extract_jpeg_shape(image_bytes)
  crop = tf.cast(
    (size / (size + 32)) * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32
  )
  y, x = ((shape[0] - crop) + 1) // 2, ((shape[1] - crop) + 1) // 2
  image = tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, crop, crop]), channels=3)
  return tf.image.resize([image], [size, size], method="bicubic")[0]


def _flax_train(image_bytes, size: int = 224):
  """flax examples/imagenet input_pipeline.preprocess_for_train, float32."""
  import tensorflow as tf

  shape = tf.io.extract_jpeg_shape(image_bytes)
  begin, box, _ = tf.image.sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    min_object_covered=0.1,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  y, x, _ = tf.unstack(begin)
  h, w, _ = tf.unstack(box)
  crop = tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=3)
  whole = tf.reduce_sum(tf.cast(tf.equal(shape, tf.shape(crop)), tf.int32)) >= 3
  image = tf.cond(
    whole,
    lambda: _flax_center_crop(image_bytes, size),
    lambda: tf.image.resize([crop], [size, size], method="bicubic")[0],
  )
  image = tf.image.random_flip_left_right(tf.reshape(image, [size, size, 3]))
  image -= tf.constant(MEAN_RGB, shape=[1, 1, 3], dtype=image.dtype)
  image /= tf.constant(STDDEV_RGB, shape=[1, 1, 3], dtype=image.dtype)
  return tf.image.convert_image_dtype(image, dtype=tf.float32)


def flax_batches(root: str, steps: int):
  import tensorflow as tf

  pattern = os.path.join(root, "tfrecord", "imagenet2012", "*", "imagenet2012-train.tfrecord-*")
  files = tf.data.Dataset.list_files(pattern, shuffle=True, seed=0)
  # tfds's reader (which flax calls): interleave 16 files, 16 records each
  ds = files.interleave(
    tf.data.TFRecordDataset,
    cycle_length=16,
    block_length=16,
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  features = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
  }

  def decode(record):
    example = tf.io.parse_single_example(record, features)
    return {"image": _flax_train(example["image"]), "label": example["label"]}

  ds = ds.repeat().shuffle(2_000, seed=0).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(BATCH, drop_remainder=True).prefetch(10)
  return ds.take(steps).as_numpy_iterator()


def previous_batches(root: str, steps: int):
  """bigbatch's ImageNet input before per-batch reads (per-example numpy_function, PIL)."""
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from bigbatch.data import pipeline, preprocess

  builder = tfds.builder("imagenet2012", data_dir=os.path.join(root, "array_record"))
  source = builder.as_data_source(split="train")
  stream = pipeline._StreamIndex(0, len(source))

  def read(i):
    record = source[int(i)]  # tfds decodes the whole JPEG (PIL)
    return np.asarray(record["image"], np.uint8), np.int32(record["label"])

  def example(index, position):
    image, label = tf.numpy_function(read, [index], [tf.uint8, tf.int32], stateful=False)
    image.set_shape([None, None, 3])
    box_seed, flip_seed = preprocess.stream_seeds(tf.stack([tf.constant(0, tf.int64), position]), 2)
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=box_seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    image = tf.image.resize(tf.slice(image, begin, box), [224, 224], method="bicubic")
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    mean, std = preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD
    image = preprocess.normalise(tf.clip_by_value(image, 0.0, 255.0), mean, std)
    return {"inputs": image, "labels": label}

  def positions():
    for step in range(steps):
      where = np.arange(step * BATCH, (step + 1) * BATCH, dtype=np.int64)
      yield stream(where), where

  signature = (tf.TensorSpec([BATCH], tf.int64), tf.TensorSpec([BATCH], tf.int64))
  ds = tf.data.Dataset.from_generator(positions, output_signature=signature).unbatch()
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH, drop_remainder=True)
  return ds.with_options(pipeline._options()).prefetch(2).as_numpy_iterator()


# ---- one measurement: a worker process ----


def _py_spy() -> str | None:
  found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
  return found if os.path.exists(found) else None


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (the reader processes), from /proc."""
  tick = os.sysconf("SC_CLK_TCK")
  pids = {os.getpid()}
  for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/children") as children:
      pids.update(int(p) for p in children.read().split())
  total = 0
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
      total += int(fields[11]) + int(fields[12])  # utime, stime
    except FileNotFoundError:
      pass
  return total / tick


def worker(contender: str, root: str, cores: str, gil: bool) -> dict:
  if cores != "all":  # before TensorFlow sizes its thread pools
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
  batches = {
    "bigbatch": bigbatch_batches,
    "flax": flax_batches,
    "previous": previous_batches,
    "bigbatch-float32": functools.partial(bigbatch_batches, float32=True),
  }
  iterator = iter(batches[contender](root, 1_000_000 if gil else WARMUP + COUNT))
  for _ in range(WARMUP):
    next(iterator)
  out = {"contender": contender, "cores": len(os.sched_getaffinity(0))}
  if not gil:
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(COUNT):
      next(iterator)
    out["examples_per_second"] = COUNT * BATCH / (time.perf_counter() - start)
    # per CPU-second of this process and its readers: what other load cannot lend or take
    out["examples_per_cpu_second"] = COUNT * BATCH / (_cpu_seconds() - cpu)
    return out
  with tempfile.NamedTemporaryFile(suffix=".txt") as samples, tempfile.TemporaryFile() as log:
    spy = subprocess.Popen(
      [_py_spy(), "record", "--pid", str(os.getpid()), "--gil", "--nonblocking", "--rate"]
      + [str(GIL_RATE), "--duration", str(GIL_SECONDS), "--format", "raw", "-o", samples.name],
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    start, examples = time.perf_counter(), 0
    while spy.poll() is None:
      next(iterator)
      examples += BATCH
    seconds = time.perf_counter() - start
    log.seek(0)
    report = log.read().decode(errors="replace")
    if spy.returncode != 0 or "Samples:" not in report:
      raise RuntimeError(f"py-spy failed ({spy.returncode}): {report[-2000:]}")
    lines = pathlib.Path(samples.name).read_text().splitlines()
    if os.environ.get("BIGBATCH_GIL_STACKS"):  # where the GIL was held, for a look
      print("\n".join(lines), file=sys.stderr)
  held = sum(int(line.rsplit(" ", 1)[1]) for line in lines if line.strip())
  fraction = held / (GIL_RATE * GIL_SECONDS)
  rate = examples / seconds
  out.update(
    examples_per_second=rate,
    gil_fraction=fraction,
    gil_us_per_example=1e6 * fraction / rate,
    ceiling_examples_per_second=rate / fraction if fraction else float("inf"),
  )
  return out


# ---- the comparison (the parent process) ----


def measure(contender: str, root: str, cores: str, gil: bool = False) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--worker", contender, "--cores", cores]
  command += ["--imagenet-dir", root] + (["--gil"] if gil else [])
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if done.returncode != 0:
    raise RuntimeError(f"{contender} on cores {cores} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(repeats: int, out: str, root: str | None = None, contenders=CONTENDERS) -> dict:
  """Measures every contender pinned to one core and on all cores; writes the results."""
  root = root or default_dir()
  ensure_data(root)
  first = str(min(os.sched_getaffinity(0)))
  rates = {(c, k): [] for c in contenders for k in ("one", "all", "cpu_one", "cpu")}
  for repeat in range(repeats):
    order = contenders if repeat % 2 == 0 else contenders[::-1]  # A B C, then C B A
    for cores, key in ((first, "one"), ("all", "all")):
      for contender in order:
        result = measure(contender, root, cores)
        rates[contender, key].append(result["examples_per_second"])
        cpu = "cpu" if key == "all" else "cpu_one"
        rates[contender, cpu].append(result["examples_per_cpu_second"])
  # float32 out changes no Python: its GIL time is bigbatch's
  sampled = [c for c in contenders if c != "bigbatch-float32"]
  gil = {c: measure(c, root, "all", gil=True) for c in sampled} if _py_spy() else {}
  cores = len(os.sched_getaffinity(0))
  results = {"cores": cores, "repeats": repeats, "batch": BATCH, "contenders": {}}
  for c in contenders:
    one, every = rates[c, "one"], rates[c, "all"]
    results["contenders"][c] = {
      "one_core": {"median": statistics.median(one), "min": min(one), "max": max(one)},
      "all_cores": {"median": statistics.median(every), "min": min(every), "max": max(every)},
      "per_core_all": statistics.median(every) / cores,
      "per_cpu_second_one": statistics.median(rates[c, "cpu_one"]),
      "per_cpu_second_all": statistics.median(rates[c, "cpu"]),
      "gil": gil.get(c),
    }
  table = _table(results, contenders)
  print(table)
  where = pathlib.Path(out)
  where.mkdir(parents=True, exist_ok=True)
  (where / "imagenet_input.json").write_text(json.dumps(results, indent=1) + "\n")
  (where / "imagenet_input.md").write_text(table + "\n")
  print(f"wrote {where / 'imagenet_input.json'} and {where / 'imagenet_input.md'}", file=sys.stderr)
  return results


def _table(results: dict, contenders) -> str:
  anchor = results["contenders"]["flax"]
  cores = results["cores"]
  lines = [
    f"ImageNet input, batch {results['batch']} at 224x224; {results['repeats']} "
    f"interleaved repeats; examples/s median [min, max]; {cores} cores",
    "",
    "| pipeline | 1 core | 1 core / flax | per CPU-second, 1 core | / flax | all cores "
    "| all / flax | per CPU-second, all | / flax | GIL-held us / example "
    "| ceiling, examples/s / process |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c in contenders:
    r = results["contenders"][c]
    one, every = r["one_core"], r["all_cores"]
    gil = r["gil"]
    held = f"{gil['gil_us_per_example']:.1f}" if gil else "not measured"
    ceiling = f"{gil['ceiling_examples_per_second']:,.0f}" if gil else "not measured"
    lines.append(
      f"| {c} | {one['median']:,.0f} [{one['min']:,.0f}, {one['max']:,.0f}] "
      f"| {one['median'] / anchor['one_core']['median']:.2f} "
      f"| {r['per_cpu_second_one']:,.0f} "
      f"| {r['per_cpu_second_one'] / anchor['per_cpu_second_one']:.2f} "
      f"| {every['median']:,.0f} [{every['min']:,.0f}, {every['max']:,.0f}] "
      f"| {every['median'] / anchor['all_cores']['median']:.2f} "
      f"| {r['per_cpu_second_all']:,.0f} "
      f"| {r['per_cpu_second_all'] / anchor['per_cpu_second_all']:.2f} | {held} | {ceiling} |"
    )
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--imagenet-dir", default=None, help="fake ImageNet (made if missing)")
  parser.add_argument("--out", default="docs/benchmarks")
  parser.add_argument("--contenders", default=",".join(CONTENDERS))
  parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
  parser.add_argument("--cores", default="all", help=argparse.SUPPRESS)
  parser.add_argument("--gil", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.imagenet_dir, args.cores, args.gil)))
    return 0
  run(args.repeats, args.out, args.imagenet_dir, tuple(args.contenders.split(",")))
  return 0


if __name__ == "__main__":
  sys.exit(main())
