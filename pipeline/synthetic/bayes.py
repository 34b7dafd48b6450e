"""The generator's Bayes-optimal risk: P(death | what was drawn before the prediction time).

``p_true`` in ground_truth.csv.gz is the risk given every latent, including the parts of
modalities an admission never recorded and the noise between a latent and its records;
no model of the files can reach its AUROC.  ``p_bayes`` is the posterior of the label given
more than any file shows at the prediction time, and nothing the files cannot show:

- the admission's EHR severity ``z_ehr``, its acuity and age, exactly (the files show them
  only through noisy labs, vitals and admission details);
- for a patient's later admissions, the patient's traits exactly (the earlier stays' files,
  diagnoses and summaries show them only in part); nothing before a first admission's
  prediction time shows them;
- the severity each ECG, CXR study and radiology report before the prediction time was
  drawn from (the files show it only through waveforms, pixels and wording).

Every file before the prediction time is those quantities plus noise independent of the
label, and a patient's other admissions are independent of this one given the traits, so by
the Neyman-Pearson lemma no classifier of the files has a better ROC curve than ``p_bayes``:
its AUROC is an upper bound on the Bayes-optimal AUROC of the pipeline's inputs.

A priori ``(z_ecg, z_notes, z_imaging) ~ N(0, I)``, or ``N(RHO * trait, (1 - RHO^2) I)`` given
the traits, and each record is a linear Gaussian observation of them (``load``, ``cross_load``, ``noise_sd`` in
the plans), so their posterior is Gaussian and the logit ``L`` is normal: ``E[sigmoid(L)]``
by Gauss-Hermite quadrature.  The cohort keeps an admission alive and in hospital at the
prediction time, which depends on the label (deaths before it) and on acuity (short stays):
the posterior is corrected for that selection.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from pipeline.synthetic import latent

LATENTS = ("ecg", "notes", "imaging")   # the order of the posterior's coordinates
WEIGHTS = np.array([latent.W_ECG, latent.W_NOTES, latent.W_IMG])


def posterior_risk(adm: pd.DataFrame, patients: pd.DataFrame, records: dict[str, pd.DataFrame]) -> np.ndarray:
    """``p_bayes`` per admission (row order of ``adm``).

    ``records[m]`` has one row per record of modality m (ecg, notes, imaging) with ``adm``
    (row position in ``adm``), ``severity``, ``load``, ``noise_sd``, ``before_prediction``
    and for notes ``cross_load`` (its loading on ``z_imaging``).
    """
    # A patient's first admission: nothing before its prediction time shows the traits, so the
    # prior is the latents' marginal N(0, I).  A later one: the earlier stays' files show them in
    # part; the bound is given them exactly, z ~ N(RHO * trait, (1 - RHO^2) I).
    later = (adm.groupby("subject_id")["admittime"].rank(method="first") > 1).to_numpy()
    traits = patients.set_index("subject_id").loc[adm["subject_id"], [f"trait_{m}" for m in LATENTS]].to_numpy()
    prior_var = np.where(later, 1 - latent.RHO**2, 1.0)
    precision = np.eye(3)[None] / prior_var[:, None, None]
    shift = np.where(later[:, None], latent.RHO * traits, 0.0) / prior_var[:, None]   # precision @ mean
    for j, m in enumerate(LATENTS):
        r = records[m]
        r = r[r["before_prediction"].to_numpy(bool)]
        h = np.zeros((len(r), 3))
        h[:, j] = r["load"].to_numpy(float)
        if m == "notes":
            h[:, LATENTS.index("imaging")] = r["cross_load"].to_numpy(float)
        if np.isnan(h).any():
            raise ValueError(f"{m} records before the prediction time without a loading")
        w = 1 / r["noise_sd"].to_numpy(float) ** 2
        idx = r["adm"].to_numpy(int)
        np.add.at(precision, idx, h[:, :, None] * h[:, None, :] * w[:, None, None])
        np.add.at(shift, idx, h * (w * r["severity"].to_numpy(float))[:, None])
    cov = np.linalg.inv(precision)
    mean = np.einsum("nij,nj->ni", cov, shift)
    age_z = (adm["age"].to_numpy(float) - 60) / 18
    known = latent.B0 + latent.W_EHR * adm["z_ehr"].to_numpy() + latent.W_AGE * age_z \
        + latent.W_ACUITY * adm["acuity"].to_numpy()
    mu = known + mean @ WEIGHTS
    sd = np.sqrt(np.einsum("i,nij,j->n", WEIGHTS, cov, WEIGHTS))
    nodes, wts = np.polynomial.hermite_e.hermegauss(40)      # E[f(Z)], Z ~ N(0, 1)
    p = expit(mu[:, None] + sd[:, None] * nodes[None, :]) @ (wts / wts.sum())
    # Selection: a death is in the cohort unless it came before the prediction time; a survivor
    # is in it if the stay outlasts the prediction time (lognormal in acuity).
    in_if_died = 1 - latent.EARLY_DEATH_FRACTION
    in_if_survived = norm.sf((np.log(latent.PREDICTION_HOURS) - np.log(latent.LOS_MEDIAN_HOURS)
                              - latent.LOS_ACUITY * adm["acuity"].to_numpy()) / latent.LOS_SD)
    return p * in_if_died / (p * in_if_died + (1 - p) * in_if_survived)
