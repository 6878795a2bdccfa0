"""Whether the data's long preparations (tokenizing a corpus) draw progress bars.

`bigbatch train --noprogress` turns them off with tfds's own, so that a run's
stderr holds nothing but its errors.
"""

from __future__ import annotations

_SHOWN = {"bars": True}


def show(enabled: bool) -> None:
  """Draws the bars (True, the default) or not."""
  _SHOWN["bars"] = bool(enabled)


def hidden() -> bool:
  """True when the bars are off: tqdm's `disable`."""
  return not _SHOWN["bars"]
