"""Decision curve analysis: net benefit against treat-all and treat-none."""
import numpy as np
import pytest

from pipeline.models.metrics import decision_curve


def test_net_benefit_by_hand_and_reference_strategies():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.35, 0.1, 0.05, 0.2, 0.6, 0.02, 0.3, 0.8])
    dc = decision_curve(y, p, thresholds=[0.25, 0.5])
    # t = 0.25: treated = risk >= 0.25 -> 3 TP (0.9, 0.4, 0.8), 3 FP (0.35, 0.6, 0.3); odds 1/3
    assert dc["model"][0] == pytest.approx(3 / 10 - 3 / 10 * (1 / 3))
    # t = 0.5: 2 TP (0.9, 0.8), 1 FP (0.6); odds 1
    assert dc["model"][1] == pytest.approx(2 / 10 - 1 / 10)
    assert dc["prevalence"] == pytest.approx(0.3)
    assert dc["treat_all"] == pytest.approx([0.3 - 0.7 / 3, 0.3 - 0.7])
    # treating everyone (p = 1) is the treat-all curve; a perfect model's net benefit is the prevalence
    assert decision_curve(y, np.ones(10))["model"] == pytest.approx(decision_curve(y, p)["treat_all"])
    assert np.allclose(decision_curve(y, y.astype(float))["model"], 0.3)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        decision_curve([0, 1], [0.2, 0.8], thresholds=[0.0, 0.5])
    with pytest.raises(ValueError, match="same length"):
        decision_curve([0, 1, 1], [0.2, 0.8])
