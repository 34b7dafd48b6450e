import numpy as np
import pandas as pd

from pipeline.stages.align import align
from pipeline.stages.tensorize import iter_shards, tensorize


def test_shards_stream_back_with_masks_and_tensors(tmp_path):
    n = 50
    cohort = pd.DataFrame({"subject_id": np.arange(n), "hadm_id": np.arange(n) + 100,
                           "prediction_time": pd.Timestamp("2150-01-01"), "label": np.arange(n) % 2,
                           "split": np.where(np.arange(n) < 30, "train", "test")})
    ecg_rows = cohort.iloc[::2]
    feats = {"ehr": pd.DataFrame({"hadm_id": cohort.hadm_id, "ehr__x__count": 1.0, "ehr__y": np.arange(n) * 1.0}),
             "ecg": pd.DataFrame({"hadm_id": ecg_rows.hadm_id, "ecg__hr": 60.0 + np.arange(len(ecg_rows))})}
    table = align(cohort, feats)
    wave = np.stack([np.full((12, 20), h, np.float32) for h in ecg_rows.hadm_id])
    info = tensorize(table, ["ehr", "ecg"], tmp_path, {"ecg": (ecg_rows.hadm_id.to_numpy(), wave)}, shard_rows=16)
    assert info == {"shards": 4, "rows": n}
    shards = list(iter_shards(tmp_path))
    assert sum(len(s["hadm_id"]) for s in shards) == n
    allrows = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    assert (allrows["ecg.mask"] == (np.arange(n) % 2 == 0)).all()
    present = allrows["ecg.mask"] == 1
    assert np.isnan(allrows["ecg.features"][~present]).all() and not np.isnan(allrows["ecg.features"][present]).any()
    assert (allrows["ecg.waveform"][present][:, 0, 0] == allrows["hadm_id"][present]).all()
    assert (allrows["ecg.waveform"][~present] == 0).all()
    test = list(iter_shards(tmp_path, split="test"))
    assert sum(len(s["hadm_id"]) for s in test) == 20
