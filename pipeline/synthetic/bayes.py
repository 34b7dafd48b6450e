"""The generator's reference posterior: P(death | the latents the files show before the prediction time).

``p_true`` in ground_truth.csv.gz is the risk given every latent, including the parts of
modalities an admission never recorded and the noise between a latent and its records;
no model of the files can reach its AUROC.  ``p_bayes`` is the posterior of the label given:

- the admission's EHR severity ``z_ehr``, its acuity, age and chronic conditions (heart
  failure, CKD, cancer), exactly (the files show them only through noisy labs, vitals,
  treatments, admission details and, for the chronic conditions, earlier admissions' codes);
- for a patient with more than one admission, the patient's traits exactly (the other
  stays' files, diagnoses and summaries show them only in part, and a later stay's
  outpatient records can predate this one); nothing in a single-stay patient's files
  before the prediction time shows them;
- whether each of ECG, radiology report and CXR was recorded before the prediction time
  (its presence depends on its own hidden severity, so absence is evidence: the
  likelihood ``sigmoid(latent.presence_logit)`` enters the posterior);
- the parameters each ECG, CXR study and radiology report before the prediction time was
  rendered from: an ECG's heart rate, rhythm, QTc, QRS width, ST shift, T inversion and
  ectopic count; a study's opacity, edema, effusion and cardiothoracic ratio; a report's
  tier draws (the files add electrode and pixel noise and word choice, independent of the
  label).

It is a REFERENCE, not a bound no model can beat.  It is calibrated on simulated
admissions (tests/test_synthetic.py) and it ranks above what the files support where it
knows a latent exactly, but it conditions on less than the files hold in one respect: a
stay that is followed by another stay of the same patient was survived, and the files show
the later stay (its admission row, its outpatient labs and studies, which may predate this
stay's discharge in the extract).  ``p_bayes`` ignores that, and its knowledge of the
traits for multi-stay patients comes from all of the patient's stays, later ones included.
A model that reads later stays (a leak a pipeline must not have) can beat it; a model that
keeps to what was known at the prediction time should not, but that is not proven.

How: a priori ``(z_ecg, z_notes, z_imaging) ~ N(0, I)``, or ``N(RHO * trait, (1 - RHO^2) I)``
given the traits.  A record's severity is ``load * z (+ cross_load * z_imaging for a report)
+ N(0, noise_sd)`` (columns of the plans), and its parameters' likelihood given the severity
is the generator's own formula (censored normals where it clips, a skew normal for the heart
rate in atrial fibrillation, Bernoulli and Poisson draws, ordered-probit tiers).  Both are
integrated on grids: ``z_ecg`` on a 1-D grid, ``(z_notes, z_imaging)`` on a 2-D grid (a
report also reflects ``z_imaging``), and the logit's distribution is their convolution on a
fine grid; ``E[sigmoid(logit)]`` is a sum.  The ECG's weight in the logit is
``W_ECG + W_INT * z_ehr`` (the interaction term), known per admission.  The cohort keeps an
admission alive and in hospital at the prediction time, which depends on the label (deaths
before it) and on acuity (short stays): the posterior is corrected for that selection.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.signal import fftconvolve
from scipy.special import expit, log_expit, log_ndtr
from scipy.stats import norm, poisson, skewnorm

from pipeline.synthetic import latent
from pipeline.synthetic.notes import TIER_CUTS

Z = np.linspace(-5.0, 5.0, 161)              # latent grid (z_ecg, z_notes, z_imaging)
SEV = np.linspace(-7.0, 8.0, 601)            # a record's severity (ECG c, CXR g, report level)
U = np.linspace(-7.0, 7.0, 561)              # a report's mean level, load * z_notes + cross * z_imaging
DT = 0.05                                    # the logit grid's step
CHUNK = 256                                  # admissions per 2-D posterior block
DRAW_SDS = (0.6, 0.5, 0.4)                   # report tier draws: indication, sentences, impressions


def _softplus(x):
    return np.logaddexp(0.0, x)


def _censored(x: np.ndarray, mu: np.ndarray, sd: float, lo: float, hi: float) -> np.ndarray:
    """log-likelihood of x = clip(mu + N(0, sd), lo, hi) on the grid (x [n, 1], mu [1, k])."""
    z = (x - mu) / sd
    at_lo, at_hi = x <= lo + 1e-9, x >= hi - 1e-9
    return np.where(at_lo, log_ndtr((lo - mu) / sd), np.where(at_hi, log_ndtr((mu - hi) / sd),
                                                                norm.logpdf(z) - np.log(sd)))


def _bernoulli(hit: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-300, 1 - 1e-16)
    return np.where(hit, np.log(p), np.log1p(-p))


def ecg_loglik(r: pd.DataFrame) -> np.ndarray:
    """[records, SEV]: log p(the record's rendered parameters | its severity c)."""
    c = SEV[None, :]
    col = {k: r[k].to_numpy(float)[:, None] for k in ("hr", "qtc", "qrs_w", "st_amp", "t_inv", "n_pvc")}
    af = r["af"].to_numpy(bool)[:, None]
    ll = _bernoulli(af, expit(1.7 * c - 3.0))
    hr_sinus = _censored(col["hr"], 70 + 11 * c, 9.0, 42.0, 165.0)
    x = col["hr"] - 82 - 11 * c                   # in AF: 9 N(0,1) + 10 |N(0,1)|, a skew normal
    sn = skewnorm(10 / 9, scale=np.sqrt(181.0))
    hr_af = np.where(col["hr"] <= 42 + 1e-9, sn.logcdf(42 - 82 - 11 * c),
                     np.where(col["hr"] >= 165 - 1e-9, sn.logsf(165 - 82 - 11 * c), sn.logpdf(x)))
    ll = ll + np.where(af, hr_af, hr_sinus)
    ll = ll + _censored(col["qtc"], 0.41 + 0.025 * c, 0.015, 0.36, 0.60)
    ll = ll + _censored(col["qrs_w"] - 1, 0.12 * c, 0.1, 0.0, 0.9)
    ll = ll + _censored(col["st_amp"], 0.09 * _softplus(1.6 * (c - 0.7)), 0.01, 0.0, 0.45)
    ll = ll + _censored(col["t_inv"], 0.5 * (c - 1), 0.2, 0.0, 1.0)
    return ll + poisson.logpmf(col["n_pvc"], 0.35 * _softplus(1.5 * (c - 0.5)))


def imaging_loglik(r: pd.DataFrame) -> np.ndarray:
    """[studies, SEV]: log p(the study's findings | its severity g)."""
    g = SEV[None, :]
    col = {k: r[k].to_numpy(float)[:, None] for k in ("opacity", "edema", "effusion", "ctr")}
    base = 0.16 * _softplus(1.5 * (g - 0.4))           # opacity = base * U(0.7, 1.3)
    ratio = col["opacity"] / base
    ll = np.where((ratio >= 0.7 - 1e-9) & (ratio <= 1.3 + 1e-9), -np.log(0.6 * base), -np.inf)
    ll = ll + _bernoulli(col["edema"] > 0, expit(1.5 * g - 2))
    has_eff = col["effusion"] > 0
    ll = ll + _bernoulli(has_eff, expit(1.8 * g - 1.8))
    ll = ll + np.where(has_eff, _censored(col["effusion"], 0.06 + 0.07 * g, 0.04, 0.03, 0.4), 0.0)
    return ll + _censored(col["ctr"], 0.45 + 0.045 * g, 0.03, 0.36, 0.72)


def _tier_logprob() -> np.ndarray:
    """[kind, SEV]: log P(tier(level + N(0, sd)) == t) (or <= t), kind = (sd, t, at_most)."""
    cuts = np.concatenate([[-np.inf], TIER_CUTS, [np.inf]])
    rows = []
    for sd in DRAW_SDS:
        for t in range(len(cuts) - 1):
            hi = norm.cdf((cuts[t + 1] - SEV) / sd)
            rows.append(np.log(np.clip(hi - norm.cdf((cuts[t] - SEV) / sd), 1e-300, None)))
            rows.append(np.log(np.clip(hi, 1e-300, None)))
    return np.array(rows)


def notes_loglik(r: pd.DataFrame) -> np.ndarray:
    """[reports, SEV]: log p(the report's tier draws | its level)."""
    n_tiers = len(TIER_CUTS) + 1
    counts = np.zeros((len(r), len(DRAW_SDS) * n_tiers * 2))
    for i, draws in enumerate(r["tier_draws"]):
        for sd, t, at_most in draws:
            counts[i, (DRAW_SDS.index(sd) * n_tiers + t) * 2 + int(at_most)] += 1
    return counts @ _tier_logprob()


def _over_latent(ll: np.ndarray, load: np.ndarray, sd: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """[records, grid]: log of the integral over the severity s of p(params | s) N(s; load * x, sd)."""
    out = np.empty((len(ll), len(grid)))
    ll = np.where(np.isfinite(ll), ll, -1e4)           # impossible severities (the opacity's range)
    top = ll.max(axis=1, keepdims=True)
    lik = np.exp(ll - top)
    step = SEV[1] - SEV[0]
    for key in {(a, b) for a, b in zip(load, sd)}:
        rows = (load == key[0]) & (sd == key[1])
        kernel = norm.pdf(SEV[None, :], key[0] * grid[:, None], key[1]) * step
        out[rows] = np.log(np.clip(lik[rows] @ kernel.T, 1e-300, None)) + top[rows]
    return out


def _binning(values: np.ndarray, origin: float, n: int) -> sparse.csr_matrix:
    """Linear (cloud-in-cell) assignment of each value to the DT grid origin + k * DT: keeps the mean."""
    f = (values - origin) / DT
    lo = np.floor(f).astype(int)
    w = f - lo
    rows = np.concatenate([np.arange(len(values))] * 2)
    return sparse.csr_matrix((np.concatenate([1 - w, w]), (rows, np.concatenate([lo, lo + 1]))),
                             shape=(len(values), n))


def _binning_rows(values: np.ndarray, weights: np.ndarray, origin: float, n: int) -> np.ndarray:
    """[rows, n]: each row's ``weights`` placed linearly at its ``values`` on the grid origin + k * DT."""
    f = (values - origin) / DT
    lo = np.floor(f).astype(int)
    w = f - lo
    rows = np.repeat(np.arange(len(values)), values.shape[1])
    out = np.zeros((len(values), n))
    np.add.at(out, (rows, lo.ravel()), (weights * (1 - w)).ravel())
    np.add.at(out, (rows, lo.ravel() + 1), (weights * w).ravel())
    return out


def _pre(records: pd.DataFrame) -> pd.DataFrame:
    pre = records[records["before_prediction"].to_numpy(bool)]
    if pre["load"].isna().any():
        raise ValueError("records before the prediction time without a loading")
    return pre


def posterior_risk(adm: pd.DataFrame, patients: pd.DataFrame, records: dict[str, pd.DataFrame]) -> np.ndarray:
    """``p_bayes`` per admission (row order of ``adm``).

    ``records``: the ECG plan, the CXR studies and the radiology reports, each with ``adm``
    (row position in ``adm``), ``before_prediction``, ``load``, ``noise_sd`` (reports also
    ``cross_load``) and the rendered parameters.
    """
    n = len(adm)
    known_traits = (adm.groupby("subject_id")["subject_id"].transform("size") > 1).to_numpy()
    traits = patients.set_index("subject_id").loc[adm["subject_id"]]

    def prior(m: str) -> np.ndarray:
        mean = np.where(known_traits, latent.RHO * traits[f"trait_{m}"].to_numpy(), 0.0)
        var = np.where(known_traits, 1 - latent.RHO**2, 1.0)
        return -0.5 * (Z[None, :] - mean[:, None]) ** 2 / var[:, None]

    log_post = {m: prior(m) for m in ("ecg", "notes", "imaging")}
    acuity = adm["acuity"].to_numpy(float)
    for m in log_post:  # recorded or not before the prediction time: evidence about its own severity
        pre = records[m]["before_prediction"].to_numpy(bool)
        present = np.isin(np.arange(n), records[m]["adm"].to_numpy(int)[pre])
        x = latent.presence_logit(m, acuity[:, None], Z[None, :])
        log_post[m] += np.where(present[:, None], log_expit(x), log_expit(-x))
    for m, loglik in (("ecg", ecg_loglik), ("imaging", imaging_loglik)):
        r = _pre(records[m])
        lz = _over_latent(loglik(r), r["load"].to_numpy(float), r["noise_sd"].to_numpy(float), Z)
        np.add.at(log_post[m], r["adm"].to_numpy(int), lz)
    reports = _pre(records["notes"])
    lu = _over_latent(notes_loglik(reports), np.ones(len(reports)), reports["noise_sd"].to_numpy(float), U)
    load, cross = reports["load"].to_numpy(float), reports["cross_load"].to_numpy(float)
    own = cross == 0                                # a function of z_notes alone: 1-D
    for j in np.flatnonzero(own):
        log_post["notes"][reports["adm"].iat[j]] += np.interp(load[j] * Z, U, lu[j])
    coupled = np.flatnonzero(~own)
    by_adm = pd.Series(coupled).groupby(reports["adm"].to_numpy(int)[coupled]).apply(list).to_dict()

    # The logit's latent part: w_e z_ecg + (W_NOTES z_notes + W_IMG z_imaging), on the DT grid,
    # where the ECG's weight w_e = W_ECG + W_INT * z_ehr is the admission's own (the interaction).
    w_e = latent.W_ECG + latent.W_INT * adm["z_ehr"].to_numpy(float)
    w_n, w_i = latent.W_NOTES, latent.W_IMG
    w_max = max(float(np.abs(w_e).max()), 1e-3) if n else 1.0
    e_origin, s_origin = -w_max * Z[-1] - DT, (w_n + w_i) * Z[0] - DT
    n_e = int(np.ceil(2 * w_max * Z[-1] / DT)) + 3
    n_s = int(np.ceil(2 * (w_n + w_i) * Z[-1] / DT)) + 3
    zn, zi = np.meshgrid(Z, Z, indexing="ij")
    bin_s = _binning((w_n * zn + w_i * zi).ravel(), s_origin, n_s)
    t_grid = e_origin + s_origin + DT * np.arange(n_e + n_s - 1)

    age_z = (adm["age"].to_numpy(float) - 60) / 18
    known = latent.B0 + latent.W_EHR * adm["z_ehr"].to_numpy() + latent.W_AGE * age_z \
        + latent.W_ACUITY * acuity + latent.chronic_part(adm)
    p = np.empty(n)
    for lo in range(0, n, CHUNK):
        idx = np.arange(lo, min(n, lo + CHUNK))
        joint = log_post["notes"][idx][:, :, None] + log_post["imaging"][idx][:, None, :]
        for k, a in enumerate(idx):
            for j in by_adm.get(a, ()):
                joint[k] += np.interp(load[j] * zn + cross[j] * zi, U, lu[j])
        joint = np.exp(joint.reshape(len(idx), -1) - joint.reshape(len(idx), -1).max(axis=1, keepdims=True))
        ps = (bin_s.T @ (joint / joint.sum(axis=1, keepdims=True)).T).T
        pe = np.exp(log_post["ecg"][idx] - log_post["ecg"][idx].max(axis=1, keepdims=True))
        pe = _binning_rows(w_e[idx, None] * Z[None, :], pe / pe.sum(axis=1, keepdims=True), e_origin, n_e)
        pt = np.clip(fftconvolve(pe, ps, axes=1), 0, None)
        p[idx] = (pt * expit(known[idx, None] + t_grid[None, :])).sum(axis=1) / pt.sum(axis=1)
    # Selection: a death is in the cohort unless it came before the prediction time; a survivor
    # is in it if the stay outlasts the prediction time (lognormal in acuity).
    in_if_died = 1 - latent.EARLY_DEATH_FRACTION
    in_if_survived = norm.sf((np.log(latent.PREDICTION_HOURS) - np.log(latent.LOS_MEDIAN_HOURS)
                              - latent.LOS_ACUITY * adm["acuity"].to_numpy()) / latent.LOS_SD)
    return p * in_if_died / (p * in_if_died + (1 - p) * in_if_survived)
