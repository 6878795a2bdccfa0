import pytest

import bigbatch as bb

N = 50_000


def test_noise_scale_exact_and_approx():
  # 0.1 * (50000/128 - 1) / (1 - 0.9) and 0.1 * 50000 / 128 / 0.1
  assert bb.noise_scale(0.1, N, 128, 0.9) == pytest.approx(389.625)
  assert bb.noise_scale(0.1, N, 128, 0.9, exact=False) == pytest.approx(390.625)
  assert bb.noise_scale(0.1, N, N) == 0.0
  assert bb.noise_scale(0.5, N, 640) == pytest.approx(0.5 * (N / 640 - 1))


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("momentum", [0.0, 0.9, 0.98])
def test_batch_size_for_noise_scale_inverts(exact, momentum):
  for batch in (1, 128, 3200, 49_999):
    g = bb.noise_scale(0.1, N, batch, momentum, exact)
    assert bb.batch_size_for_noise_scale(g, 0.1, N, momentum, exact) == pytest.approx(batch)


def test_scaling_rules_match_the_paper():
  # B ∝ lr: 128 -> 640 takes lr 0.1 -> 0.5 (section 5.2, "increased initial lr").
  assert bb.scale_learning_rate(0.1, 128, 640, N, exact=False) == pytest.approx(0.5)
  # B ∝ 1/(1-m): 640 -> 3200 takes m 0.9 -> 0.98 (section 5.2, "increased momentum").
  assert bb.scale_momentum(0.9, 640, 3200, N, exact=False) == pytest.approx(0.98)


@pytest.mark.parametrize("exact", [True, False])
def test_scaling_rules_keep_the_noise_scale(exact):
  g = bb.noise_scale(0.1, N, 128, 0.9, exact)
  lr = bb.scale_learning_rate(0.1, 128, 1000, N, exact)
  assert bb.noise_scale(lr, N, 1000, 0.9, exact) == pytest.approx(g)
  m = bb.scale_momentum(0.9, 128, 1000, N, exact)
  assert bb.noise_scale(0.1, N, 1000, m, exact) == pytest.approx(g)
  # the exact rule differs from the linear one once B is not small against N
  if exact:
    assert lr != pytest.approx(0.1 * 1000 / 128, rel=1e-3)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: bb.noise_scale(0.1, N, 128, 1.0), "momentum"),
    (lambda: bb.noise_scale(0.1, N, N + 1), "batch_size"),
    (lambda: bb.noise_scale(0.1, N, 0), "batch_size"),
    (lambda: bb.scale_momentum(0.9, 1000, 10, N), "no momentum"),
    (lambda: bb.batch_size_for_noise_scale(1e9, 0.1, N), "batch"),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
