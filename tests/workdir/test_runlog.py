"""The metrics log: one row per step, cut back to a checkpoint on resume, JSON that parses."""

import json
import math

import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from bigbatch.workdir.files import WorkdirError
from bigbatch.workdir.runlog import MetricsLog, read_rows


def events(workdir):
  """(file, [(step, kind, tags)]) of each TensorBoard event file, in name order."""
  found = []
  for path in sorted((workdir / "tensorboard").iterdir()):
    parsed = [event_pb2.Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    found.append([(e.step, e.WhichOneof("what"), [v.tag for v in e.summary.value]) for e in parsed])
  return found


def test_rows_are_json_with_unknown_values_as_null(tmp_path):
  log = MetricsLog(tmp_path, 0, say=print)
  log.write(1, {"loss": 2.5, "grad_noise_scale_high": math.inf, "low": math.nan, "v": [1, 2]})
  log.close()
  (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert row == {"step": 1, "loss": 2.5, "grad_noise_scale_high": None, "low": None, "v": [1, 2]}
  (run,) = events(tmp_path)
  assert run[1] == (1, "session_log", []) and run[2] == (1, "summary", ["loss"])


def test_a_resume_keeps_the_rows_up_to_its_checkpoint_and_starts_a_new_event_file(tmp_path):
  log = MetricsLog(tmp_path, 0)
  for step in (5, 10, 15):
    log.write(step, {"loss": float(step)})
  log.close()
  again = MetricsLog(tmp_path, 10)  # the checkpoint at step 10
  again.write(15, {"loss": 0.5})
  again.close()
  rows = read_rows(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(5, 5.0), (10, 10.0), (15, 0.5)]
  first, second = events(tmp_path)
  assert second[1] == (11, "session_log", [])  # TensorBoard drops the first start's 15
  assert [e[0] for e in first if e[1] == "summary"] == [5, 10, 15]


def test_a_torn_last_line_is_dropped_with_a_note_and_a_broken_one_before_it_refused(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  notes = []
  assert read_rows(path, notes.append) == [{"step": 1, "loss": 1.0}]
  assert notes and "dropped a torn last line" in notes[0]
  path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(WorkdirError, match=r"metrics.jsonl: line 2 is not a metrics row"):
    read_rows(path)
  path.write_text('{"loss": 1.0}\n')
  with pytest.raises(WorkdirError, match="line 1 is not a metrics row \\(no integer 'step'\\)"):
    read_rows(path)


def test_a_process_other_than_the_first_writes_nothing(tmp_path):
  log = MetricsLog(tmp_path, 0, enabled=False)
  log.write(1, {"loss": 1.0})
  log.sync()
  log.close()
  assert list(tmp_path.iterdir()) == []
