"""Calibration of the selector: thresholds, logistic fits with an offset, the choice of model-alone signals,
per-model operating points with their false-accept and false-reject rates."""

from __future__ import annotations

import numpy as np
import pytest

from ModelSelectorLib.selection.calibration import (
    choose_signals,
    fit_setting,
    offset_logistic,
    youden_threshold,
)
from ModelSelectorLib.selection.scoring import calibration_key, model_threshold, plain_logit, verify_term

KEY = calibration_key(("exemplar",), False)


def test_youden_threshold_separates_in_the_middle_of_the_gap():
    z = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    y = np.array([False, False, False, True, True, True])
    t = youden_threshold(z, y)
    assert abs(t) < 1e-9  # every cut between -1 and 1 is perfect; the middle of the gap is kept
    assert youden_threshold(z, np.ones(6, bool)) == 0.0  # one class only: no information, the default
    z2 = np.array([0.0, 0.5, 0.6, 0.7, 2.0, 2.1])
    y2 = np.array([False, True, False, False, True, True])
    t2 = youden_threshold(z2, y2)
    assert (z2[y2] >= t2).mean() - (z2[~y2] >= t2).mean() == pytest.approx(2 / 3)


def test_offset_logistic_learns_the_weight_of_a_signal():
    rng = np.random.default_rng(0)
    s = rng.normal(size=400)
    offset = rng.normal(size=400)
    y = rng.random(400) < 1.0 / (1.0 + np.exp(-(offset + 2.0 * s)))
    w = offset_logistic(offset, s[:, None], y, l2=1e-3)
    assert 1.3 < w[0] < 2.7


def test_choose_signals_keeps_an_informative_signal_and_drops_noise():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.4
    offset = np.where(y, 0.3, -0.3) + rng.normal(0, 1, 300)
    useful = np.where(y, 0.9, 0.2) + rng.normal(0, 0.1, 300)
    kept, cv = choose_signals(offset, {"fit": useful, "feature_fit": rng.random(300)}, y)
    assert set(kept) <= {"fit", "feature_fit"} and "fit" in kept and kept["fit"]["weight"] > 0
    assert cv["fit"] < cv["none"] and set(cv) == {"none", "fit", "feature_fit", "feature_fit+fit"}
    kept_noise, _ = choose_signals(offset, {"fit": rng.random(300)}, y)
    assert kept_noise == {}
    inverted, _ = choose_signals(offset, {"fit": -useful}, y)  # a better fit must not lower the score
    assert inverted == {}


def _records(rng, model, task, n_pos, n_neg, shift):
    out = []
    for i in range(n_pos + n_neg):
        pos = i < n_pos
        out.append({"case": i, "model": model, "task_type": task, "dims_ok": True, "relevant": pos,
                    "agree": float(np.clip(rng.normal(0.8 if pos else 0.1, 0.1), 0, 1)), "p_ood": 0.0,
                    "sim": {KEY: float(rng.normal(0.7 + shift if pos else 0.3, 0.05))},
                    "signals": {"fit": float(rng.normal(0.8 if pos else 0.4, 0.05))}})  # fmt: skip
    return out


def test_fit_setting_gives_each_model_its_operating_point_and_rates():
    rng = np.random.default_rng(2)
    recs = _records(rng, "a", "segmentation", 30, 60, 0.0) + _records(rng, "b", "segmentation", 2, 60, 0.1)
    setting = fit_setting(recs, ("exemplar",), verify=True, min_positives=5)
    assert setting["weights"]["sim"] > 0 and setting["weights"]["agree"] > 0
    a, b = setting["models"]["a"], setting["models"]["b"]
    assert not a["pooled"] and b["pooled"]  # two positives are too few for an own threshold
    assert b["threshold"] == setting["threshold"]
    assert a["n_positive"] == 30 and a["n_negative"] == 60 and a["far"] <= 0.1 and a["frr"] <= 0.1
    assert "segmentation" in setting["signal_selection"]
    # the stored setting scores a new image the way it was fitted
    feats = np.array([1.0, 0.75, np.log(0.8 / 0.2), 0.0, 0.0])
    z = plain_logit(setting, feats) + verify_term(setting, "segmentation", {"fit": 0.8})
    assert z - model_threshold(setting, "a") > 0
    assert verify_term(setting, "landmarks", {"fit": 0.1}) == 0.0  # no signal kept for another task type
    assert verify_term(setting, "segmentation", None) == 0.0
