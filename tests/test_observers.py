"""Observers (needle/quant/observers.py) and prepare / calibrate."""
import numpy as np
import pytest

from needle.quant import QConfig, calibrate, prepare, reference as R
from needle.quant.fuse import fuse_model
from needle.quant.observers import (MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver,
                                    PercentileObserver, make_observer)

from quant_helpers import images, mnist_cnn, tensor


def _batches(seed=0, shape=(8, 3, 5, 5), n=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.5, 2.0, shape).astype(np.float32) for _ in range(n)]


def test_minmax_per_tensor_and_per_channel():
    xs = _batches()
    allx = np.concatenate(xs)
    obs, obs_c = MinMaxObserver(), MinMaxObserver(dtype="int8", scheme="symmetric", axis=1)
    for x in xs:
        obs.observe(x)
        obs_c.observe(tensor(x))  # Tensors work too
    assert obs.range() == (float(allx.min()), float(allx.max()))
    lo, hi = obs_c.range()
    np.testing.assert_array_equal(lo, allx.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(hi, allx.max(axis=(0, 2, 3)))
    s, zp = obs.qparams()
    s_ref, zp_ref = R.choose_qparams(allx.min(), allx.max(), "affine", "uint8")
    assert s == s_ref and zp == zp_ref
    s_c, zp_c = obs_c.qparams()
    np.testing.assert_array_equal(s_c, R.choose_qparams(lo, hi, "symmetric", "int8")[0])
    assert s_c.shape == (3,) and np.all(zp_c == 0)
    assert obs.num_batches == 3


def test_minmax_negative_axis_and_channel_last_view():
    # the channel axis given from the end, channels in the middle of the shape: column c of
    # the view holds exactly channel c's values (rows in any order)
    x = np.random.default_rng(3).normal(size=(2, 4, 3, 5)).astype(np.float32)
    x[:, 2] += 10.0  # channel 2 far from the others: a view that mixes channels shows it
    for axis in (1, -3):
        obs = MinMaxObserver(axis=axis)
        x2d = obs._observe(x)
        assert x2d.dtype == np.float32 and x2d.shape == (30, 4)
        for c in range(4):
            vals = np.sort(x[:, c].ravel())
            np.testing.assert_array_equal(np.sort(x2d[:, c]), vals)
            assert obs.lo[c] == vals[0] and obs.hi[c] == vals[-1]
    obs = MinMaxObserver(axis=-1)
    obs.observe(x)
    np.testing.assert_array_equal(obs.range()[1], x.max(axis=(0, 1, 2)))
    per_tensor = MinMaxObserver()
    x2d = per_tensor._observe(x)
    assert x2d.shape == (x.size, 1)
    np.testing.assert_array_equal(np.sort(x2d[:, 0]), np.sort(x.ravel()))
    assert per_tensor.lo.shape == (1,) and per_tensor.lo.dtype == np.float32


def test_minmax_empty_batches_change_nothing():
    obs = MinMaxObserver(axis=1)
    assert obs._observe(np.zeros((0, 3, 2), np.float32)) is None
    obs.observe(np.zeros((0, 3, 2), np.float32))  # before any data: not counted, no range
    assert obs.num_batches == 0
    with pytest.raises(RuntimeError, match="no data"):
        obs.range()
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2) - 4.0
    obs.observe(x)
    obs.observe(np.zeros((0, 3, 2), np.float32))  # after data: the range stays
    obs.observe(np.zeros((4, 3, 0), np.float32))
    assert obs.num_batches == 1
    np.testing.assert_array_equal(obs.range()[0], x.min(axis=(0, 2)))
    np.testing.assert_array_equal(obs.range()[1], x.max(axis=(0, 2)))
    # the observers built on min/max skip them too
    for o in (MovingAverageMinMaxObserver(axis=1), PercentileObserver(axis=1), MSEObserver(axis=1)):
        o.observe(np.zeros((0, 3, 2), np.float32))
        o.observe(x)
        o.observe(np.zeros((0, 3, 2), np.float32))
        assert o.num_batches == 1 and o.range()[0].shape == (3,)


def test_minmax_running_range_per_channel_over_batches():
    # every batch moves a different channel's extremes: only a running min/max keeps them all
    xs = [np.zeros((2, 3), np.float32) for _ in range(3)]
    xs[0][0, 0], xs[1][1, 1], xs[2][0, 2] = -5.0, 7.0, -2.0
    xs[1][0, 0] = 1.0
    obs = MinMaxObserver(axis=1)
    for x in xs:
        obs.observe(x)
    np.testing.assert_array_equal(obs.range()[0], [-5.0, 0.0, -2.0])
    np.testing.assert_array_equal(obs.range()[1], [1.0, 7.0, 0.0])


def test_moving_average():
    xs = _batches(n=3)
    obs = MovingAverageMinMaxObserver(averaging_constant=0.25, axis=1)
    lo, hi = xs[0].min(axis=(0, 2, 3)), xs[0].max(axis=(0, 2, 3))
    for x in xs:
        obs.observe(x)
    for x in xs[1:]:
        lo = lo + 0.25 * (x.min(axis=(0, 2, 3)) - lo)
        hi = hi + 0.25 * (x.max(axis=(0, 2, 3)) - hi)
    np.testing.assert_allclose(obs.range()[0], lo, rtol=1e-6)
    np.testing.assert_allclose(obs.range()[1], hi, rtol=1e-6)


def test_percentile_matches_numpy():
    xs = _batches(n=2, shape=(40, 3))
    obs = PercentileObserver(percentile=99.0, axis=1, max_samples=10 ** 6)
    obs_t = PercentileObserver(percentile=90.0)
    for x in xs:
        obs.observe(x)
        obs_t.observe(x)
    allx = np.concatenate(xs)
    np.testing.assert_allclose(obs.range()[0], np.percentile(allx, 1.0, axis=0), rtol=1e-6)
    np.testing.assert_allclose(obs.range()[1], np.percentile(allx, 99.0, axis=0), rtol=1e-6)
    lo, hi = obs_t.range()
    assert lo == pytest.approx(np.percentile(allx, 10.0), rel=1e-6)
    assert hi == pytest.approx(np.percentile(allx, 90.0), rel=1e-6)
    assert hi < allx.max()


def _mse(x, lo, hi, **kw):
    s, zp = R.choose_qparams(lo, hi, **kw)
    deq = R.fake_quantize(x, s, zp, kw["dtype"], bits=kw.get("bits"))
    return float(((deq - x) ** 2).mean())


def test_mse_observer_clips_tails_and_beats_minmax():
    # with 4 bits a Gaussian's rare tails cost less than the coarse steps min/max would give
    x = np.random.default_rng(0).normal(0, 1, 20000).astype(np.float32)
    kw = dict(scheme="affine", dtype="uint8", bits=4)
    obs = MSEObserver(num_candidates=40, max_samples=10 ** 6, **kw)
    obs.observe(x)
    lo, hi = obs.range()
    assert hi < 0.8 * x.max() and lo > 0.8 * x.min()
    best = _mse(x, lo, hi, **kw)
    assert best < 0.7 * _mse(x, x.min(), x.max(), **kw)
    for a in np.linspace(0.2, 1.0, 40):  # the best of its candidates
        assert best <= _mse(x, a * x.min(), a * x.max(), **kw) + 1e-12


def test_mse_observer_per_channel_symmetric():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (8000, 3)).astype(np.float32) * np.float32([1, 2, 3])
    w[:, 1] = rng.uniform(-1, 1, 8000)
    obs = MSEObserver(dtype="int8", scheme="symmetric", axis=1, bits=4, reduced_range=True,
                      max_samples=10 ** 6)
    obs.observe(w)
    lo, hi = obs.range()
    assert lo.shape == (3,)
    amax = np.abs(w).max(axis=0)
    clip = np.maximum(-lo, hi)
    assert clip[0] < 0.8 * amax[0] and clip[2] < 0.8 * amax[2]  # Gaussian channels: clipped
    assert clip[1] > 0.8 * amax[1]  # the uniform channel has no tails worth clipping
    s, zp = obs.qparams()
    assert np.all(zp == 0) and s.shape == (3,)


class _FixedSample(MSEObserver):
    """An MSE observer whose sample is given (the range still comes from observe)."""

    def __init__(self, sample, **kw):
        super().__init__(**kw)
        self.fixed = np.asarray(sample, np.float32)

    def samples(self):
        return self.fixed


def test_mse_observer_ties_keep_the_smallest_candidate():
    # a sample of zeros is represented exactly by every candidate (zero is always on the
    # grid): all errors tie at 0 and the first, smallest candidate wins
    obs = _FixedSample(np.zeros((50, 2)), dtype="int8", scheme="symmetric", axis=1,
                       num_candidates=5, min_fraction=0.2)
    obs.observe(np.array([[-1.0, -4.0], [2.0, 3.0]], np.float32))
    lo, hi = obs.range()
    np.testing.assert_allclose(lo, [-0.2, -0.8], rtol=1e-12)
    np.testing.assert_allclose(hi, [0.4, 0.6], rtol=1e-12)


def test_mse_observer_picks_the_best_candidate_per_channel():
    # a heavy-tailed channel and a uniform one, 5-bit uint8, 25 candidates from 0.1: the best
    # factors (found once by scoring all 25 candidates in float64) are 0.7375 and 1.0
    rng = np.random.default_rng(7)
    x = np.stack([rng.standard_t(2, 3000), rng.uniform(-1, 3, 3000)], axis=1).astype(np.float32)
    kw = dict(dtype="uint8", scheme="affine", bits=5)
    obs = MSEObserver(axis=-1, num_candidates=25, min_fraction=0.1, max_samples=10 ** 6, **kw)
    obs.observe(x[:1500])
    obs.observe(x[1500:])
    lo, hi = obs.range()
    a = np.linspace(0.1, 1.0, 25)[[17, 24]]
    np.testing.assert_allclose(lo, a * x.min(axis=0).astype(np.float64), rtol=1e-12)
    np.testing.assert_allclose(hi, a * x.max(axis=0).astype(np.float64), rtol=1e-12)
    for c in range(2):  # and it beats the full range of its channel
        assert _mse(x[:, c], lo[c], hi[c], **kw) <= _mse(x[:, c], x[:, c].min(), x[:, c].max(), **kw)


def test_observer_errors():
    with pytest.raises(RuntimeError, match="no data"):
        MinMaxObserver().range()
    with pytest.raises(ValueError, match="axis 4"):
        MinMaxObserver(axis=4).observe(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=20)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0)
    with pytest.raises(ValueError, match="unknown observer 'max'"):
        make_observer("max")
    with pytest.raises(ValueError, match="does not accept"):
        make_observer("minmax", percentile=99.0)
    with pytest.raises(ValueError, match="scheme"):
        MinMaxObserver(scheme="affine2")
    with pytest.raises(ValueError, match="bits"):
        MinMaxObserver(dtype="int8", bits=9)


def test_qconfig_validation_and_json():
    cfg = QConfig(activation_observer="percentile", weight_bits=4,
                  weight_granularity="per_tensor", observer_args={"percentile": 99.9})
    assert QConfig.from_json(cfg.to_json()) == cfg
    assert cfg.weight_qrange() == (-7, 7)
    assert isinstance(cfg.make_activation_observer(), PercentileObserver)
    assert cfg.make_weight_observer(axis=3).axis is None  # per tensor
    assert QConfig().make_weight_observer(axis=3).axis == 3
    for bad in (dict(weight_bits=1), dict(weight_bits=9), dict(activation_dtype="int16"),
                dict(activation_observer="hist"), dict(weight_granularity="per_row")):
        with pytest.raises(ValueError, match=list(bad)[0]):
            QConfig(**bad)
    with pytest.raises(ValueError, match="does not accept"):
        QConfig(observer_args={"percentile": 99.0})  # the minmax observer takes no percentile
    with pytest.raises(ValueError, match="unknown QConfig fields"):
        QConfig.from_dict({"bits": 8})


def test_prepare_and_calibrate_record_activation_ranges():
    model = mnist_cnn()
    xs = images(6, batches=3)
    prepared = prepare(model, QConfig())
    assert calibrate(prepared, xs, num_batches=2, progress=False) == 12
    observed = prepared.observed_modules()
    assert len(observed) == 8  # 7 fused Conv/Linear and the residual add
    # ground truth: run the fused float model layer by layer on the same batches
    fused = fuse_model(model)
    lo = hi = None
    for x in xs[:2]:
        h = fused.model.modules[0](tensor(x)).numpy()
        lo = h.min() if lo is None else min(lo, h.min())
        hi = h.max() if hi is None else max(hi, h.max())
    first = prepared.model.model.modules[0]
    assert first.observer.range() == (float(lo), float(hi))
    assert first.observer.num_batches == 2
    assert prepared.input_observer.range() == (float(min(x.min() for x in xs[:2])),
                                               float(max(x.max() for x in xs[:2])))
    with pytest.raises(ValueError, match="no data"):
        calibrate(prepare(model), [], progress=False)
