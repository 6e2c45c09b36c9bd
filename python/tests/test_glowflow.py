"""The Python package: shapes and dtypes, save/load exact, errors as ValueError, image round trip."""

import numpy as np
import pytest

import glowflow


def table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]])


def test_vector_fit_scores_samples_and_round_trips(tmp_path):
    X = table()
    f = glowflow.VectorFlow(features=3, flow_steps=4, net_width=16).fit(
        X, steps=60, batch_size=100, lr=1e-3, progress=False)
    lp = f.log_prob(X)
    assert lp.dtype == np.float64 and lp.shape == (400,) and np.isfinite(lp).all()
    s = f.sample(7, seed=3)
    assert s.shape == (7, 3)
    np.testing.assert_array_equal(s, f.sample(7, seed=3))
    f.save(tmp_path / "m")
    g = glowflow.load(tmp_path / "m")
    np.testing.assert_array_equal(g.log_prob(X), lp)
    assert "flow_steps=4" in repr(g)


def test_conditional_flow_takes_one_context_or_one_per_sample():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(300, 1))
    X = np.hstack([c + 0.1 * rng.normal(size=(300, 1)), rng.normal(size=(300, 1))])
    f = glowflow.VectorFlow(features=2, context=1, flow_steps=2, net_width=8).fit(
        X, context=c, steps=20, batch_size=100, progress=False)
    assert f.sample(5, context=[[0.5]], seed=0).shape == (5, 2)
    assert f.sample(5, context=np.zeros((5, 1)), seed=0).shape == (5, 2)
    assert f.log_prob(X, context=c).shape == (300,)


def test_bad_input_raises_value_error_naming_it():
    X = table()
    X[5, 1] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        glowflow.VectorFlow(features=3, flow_steps=2).fit(X, steps=2, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        glowflow.VectorFlow(features=3, flow_steps=2).fit(table(), steps=2, batch_size=0, progress=False)
    with pytest.raises(TypeError):
        glowflow.ImageGlow().fit(np.zeros((4, 8, 8), dtype=np.float32))


def test_callback_exception_stops_the_fit_and_keeps_the_model():
    seen = []

    def cb(step, loss):
        seen.append(step)
        if step >= 20:
            raise KeyboardInterrupt

    f = glowflow.VectorFlow(features=3, flow_steps=2, net_width=8)
    with pytest.raises(KeyboardInterrupt):
        f.fit(table(), steps=100000, batch_size=50, log_every=10, callback=cb, progress=False)
    assert seen[:2] == [10, 20]
    assert f.figures["interrupted"] and f.figures["steps"] < 100000
    assert np.isfinite(f.log_prob(table(10))).all()


def test_image_glow_encode_decode_is_exact():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(32, 8, 8), dtype=np.uint8)
    g = glowflow.ImageGlow(levels=2, steps_per_level=1, net_width=8).fit(
        imgs, steps=3, batch_size=8, warmup=1, progress=False)
    zs = g.encode(imgs[:4])
    assert len(zs) == 2
    np.testing.assert_array_equal(g.decode(zs), imgs[:4])
    bpd = g.bits_per_dim(imgs[:4])
    assert bpd.shape == (4,) and np.isfinite(bpd).all()
    s = g.sample(3, seed=1)
    assert s.shape == (3, 8, 8) and s.dtype == np.uint8
