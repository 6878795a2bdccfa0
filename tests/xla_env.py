"""XLA's flags for the tests' processes: this one (conftest.py) and each one a test starts.

Much of the suite's time is XLA compiling small programs for the CPU. LLVM's optimisation
level 1 (of 0 to 3; XLA's default is 2) compiles them about a third faster, and the code
runs as fast at the tests' sizes; level 0 compiles faster still but runs the longer tests
at half the speed (measured on tests/step). Every process gets the same flags: a test that
compares a run in this process with one in another, bit for bit, compares code generated
alike.
"""

FAST_COMPILE = "--xla_backend_optimization_level=1"


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a process the tests start, with `devices` fake CPU devices (None: XLA's
  default, one)."""
  count = f" --xla_force_host_platform_device_count={devices}" if devices else ""
  return FAST_COMPILE + count
