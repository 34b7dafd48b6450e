"""pipeline.sources.zero_phase: the same numbers as scipy's sosfiltfilt, bit for bit."""
import numpy as np
import pytest
from scipy import signal as sps

from pipeline.sources.zero_phase import ZeroPhase


@pytest.mark.parametrize("sos", [sps.butter(2, 0.5, btype="highpass", fs=500, output="sos"),
                                 np.vstack([sps.butter(2, 40, fs=500, output="sos"),
                                            sps.tf2sos(*sps.iirnotch(50.0, 5.0, fs=500))])])
def test_zero_phase_equals_sosfiltfilt(sos):
    x = np.random.default_rng(0).normal(size=(300, 4))
    f = ZeroPhase(sos)
    for axis, data in ((0, x), (1, x.T), (-1, x.T.copy()), (0, x[:, 0])):
        assert np.array_equal(f(data, axis=axis), sps.sosfiltfilt(sos, data, axis=axis))
    with pytest.raises(ValueError, match="padlen"):
        f(x[:f.edge], axis=0)
    with pytest.raises(ValueError, match="padlen"):
        sps.sosfiltfilt(sos, x[:f.edge], axis=0)
