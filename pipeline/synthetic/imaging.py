"""MIMIC-CXR-JPG layout: metadata and CheXpert label tables and 256x256 grayscale JPEGs.

Each image is rendered from a density map: body outline, two air-filled lung
fields, mediastinum and spine, heart shadow, diaphragm domes, ribs and
clavicles; then an X-ray-like transfer (1 - exp(-k D)), blur and noise.  The
study's imaging severity ``g`` (the hidden ``z_imaging`` plus noise) sets the
findings: diffuse air-space opacities, perihilar edema, pleural effusion
(a bright, blunted base with a meniscus) and cardiomegaly (a wider heart).
Exposure, patient size, rotation and position vary independently of ``g``.
Portable AP views, used more for sicker patients, magnify the heart and show
support devices, as on real films.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import child_seeds, sigmoid, write_csv
from pipeline.synthetic.latent import PREDICTION_HOURS, presence_logit

SIZE = 256
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
CHEXPERT_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                   "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                   "Pneumothorax", "Support Devices"]
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


RES = 128  # the density map's grid; the image is upsampled from it (4x cheaper than rendering at 256)


def _smooth(x: np.ndarray, edge: float) -> np.ndarray:
    """A soft 0..1 step: 1 where x < 0, a linear ramp over ``edge``."""
    return np.clip(np.float32(0.5) - x * np.float32(1 / edge), 0, 1)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))


def _texture(rng: np.random.Generator, cells: int) -> np.ndarray:
    return np.clip(_resize(rng.random((cells, cells), dtype=np.float32), RES), 0, 1)


def render(p: dict) -> np.ndarray:
    """A (256, 256) uint8 image from one image's parameters (deterministic given p['seed'])."""
    rng = np.random.default_rng(int(p["seed"]))
    ax = (np.arange(RES, dtype=np.float32) - RES / 2 + 0.5) / (RES / 2)
    v0, u0 = np.meshgrid(ax, ax, indexing="ij")
    th = np.deg2rad(rng.normal(0, 2.5))
    c, sn, s = np.float32(np.cos(th)), np.float32(np.sin(th)), np.float32(p["scale"])
    u = (c * u0 + sn * v0) / s - np.float32(rng.normal(0, 0.03))
    v = (-sn * u0 + c * v0) / s - np.float32(rng.normal(0, 0.03))
    d = _lateral(rng, u, v, p) if p["view"] == "LATERAL" else _frontal(rng, u, v, p)
    img = 1 - np.exp(np.float32(-p["exposure"]) * d)
    img = np.clip(_resize(img, SIZE), 0, 1) ** np.float32(p["gamma"])
    img = img + rng.normal(0, 0.018, img.shape).astype(np.float32)
    lo, hi = img.min(), np.partition(img.ravel(), int(0.995 * img.size))[int(0.995 * img.size)]
    return np.clip((img - lo) / max(1e-6, hi - lo) * 235 + 8, 0, 255).astype(np.uint8)


def _frontal(rng: np.random.Generator, u, v, p: dict) -> np.ndarray:
    w = p["width"]
    body = _smooth(np.abs(u / (0.97 * w)) ** 3 + np.abs((v - 0.3) / 1.35) ** 3 - 1, 0.04)
    d = 0.55 * body
    cage = _smooth((u / (0.74 * w)) ** 2 + ((v - 0.02) / 0.78) ** 2 - 1, 0.03)
    lungs = np.zeros_like(u)
    lung_masks = []
    for side, cx in ((-1, -0.36 * w), (1, 0.37 * w)):
        a, b, cy = 0.26 * w, 0.66, -0.05
        dome = 0.5 + (0.0 if side == -1 else 0.05) + 0.16 * ((u - cx) / a) ** 2 - p["inspiration"]
        m = _smooth(((u - cx) / a) ** 2 + np.abs((v - cy) / b) ** 3 - 1, 0.03) * _smooth(v - dome, 0.015)
        lung_masks.append((m, cx, a, dome))
        lungs = np.maximum(lungs, m)
    hila = np.exp(-((np.abs(u) - 0.18) ** 2 / 0.02 + (v - 0.0) ** 2 / 0.03))
    markings = _texture(rng, 32) * (0.4 + hila)
    d -= 0.5 * lungs * (1 - 0.15 * markings)
    # Heart: its right border beside the spine, its width set by the cardiothoracic ratio (AP magnifies).
    hw = p["ctr"] * 0.74 * w * (1.1 if p["view"] == "AP" else 1.0)
    left = -0.13 * w
    heart = _smooth(((u - left - hw) / hw) ** 2 + ((v - 0.36) / 0.27) ** 2 - 1, 0.025)
    d += 0.5 * heart * lungs
    knob = _smooth(((u - 0.1) / 0.08) ** 2 + ((v + 0.25) / 0.07) ** 2 - 1, 0.02)
    d += 0.4 * knob * lungs
    bubble = _smooth(((u - 0.35 * w) / 0.1) ** 2 + ((v - 0.66) / 0.05) ** 2 - 1, 0.02)
    d -= 0.25 * bubble
    spine = _smooth(np.abs(u) - 0.06, 0.01) * body
    d += 0.18 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.085))
    # Ribs: bands curving down laterally, inside the rib cage; and the clavicles.
    phase = (v - 0.35 * u ** 2) / 0.12 + p["rib_phase"]
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 6 * (np.abs(u) > 0.07) * cage
    d += 0.12 * ribs
    clav = _smooth(np.abs(v - (-0.7 + 0.18 * np.abs(u))) - 0.022, 0.01) * (np.abs(u) > 0.06) * \
        (np.abs(u) < 0.6 * w)
    d += 0.22 * clav
    # Findings.
    if p["opacity"] > 0:
        tex = _texture(rng, 12)
        zone = 0.6 + 0.4 * np.clip(v + 0.3, 0, 1)
        d += p["opacity"] * lungs * zone * (0.3 + tex)
    if p["edema"] > 0:
        d += p["edema"] * hila * lungs
    for side_i, (m, cx, a, dome) in enumerate(lung_masks):
        e = p["effusion_r"] if side_i == 0 else p["effusion_l"]
        if e > 0:
            level = dome - e * 1.1 - 0.25 * e * np.abs((u - cx) / a)  # meniscus: higher laterally
            d += 0.5 * _smooth(level - v, 0.02) * m
    if p["devices"]:
        d += 0.5 * _smooth(np.abs(u - 0.01) - 0.012, 0.004) * (v > -1) * (v < -0.3)          # ET tube
        d += 0.4 * _smooth(np.abs(v - (-0.55 + 0.9 * (u + 0.45) ** 2)) - 0.008, 0.004) * (u > -0.5) * (u < -0.05)
        for cx, cy in rng.uniform(-0.7, 0.7, (3, 2)):
            d += 0.5 * _smooth(np.abs(np.hypot(u - cx, v - cy) - 0.04) - 0.006, 0.003)
    return np.clip(d, 0, None)


def _lateral(rng: np.random.Generator, u, v, p: dict) -> np.ndarray:
    body = _smooth((u / 0.78) ** 2 + ((v - 0.2) / 1.2) ** 2 - 1, 0.04)
    d = 0.9 * body
    dome = 0.45 + 0.15 * (u + 0.2) ** 2 - p["inspiration"]
    lung = _smooth((u / 0.58) ** 2 + ((v + 0.02) / 0.62) ** 2 - 1, 0.03) * _smooth(v - dome, 0.02)
    d -= 0.6 * lung
    hw = p["ctr"] * 0.75
    heart = _smooth(((u + 0.2) / hw) ** 2 + ((v - 0.25) / 0.3) ** 2 - 1, 0.04)
    d += 0.35 * heart * lung
    spine = _smooth(np.abs(u - 0.58) - 0.1, 0.02) * body
    d += 0.35 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.1))
    if p["opacity"] > 0:
        d += p["opacity"] * lung * (0.4 + _texture(rng, 10))
    e = max(p["effusion_r"], p["effusion_l"])
    if e > 0:  # posterior costophrenic blunting
        d += 0.6 * _smooth(dome - e * 1.1 - 0.3 * e * (u + 0.6) - v, 0.02) * lung * (u > 0)
    return np.clip(d, 0, None)


def image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def write_images(root: str, specs: list[dict]) -> int:
    from PIL import Image
    for p in specs:
        path = Path(root) / p["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(p), mode="L").save(path, quality=90)
    return len(specs)


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    words = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    return ["-".join(f"{int(x):08x}" for x in row) for row in words]


def plan_studies(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """CXR studies: before the prediction time (presence depends on acuity and z_imaging) and later in the stay."""
    n = len(adm)
    present = rng.random(n) < sigmoid(presence_logit("imaging", adm["acuity"], adm["z_imaging"]))
    n_pre = np.where(present, np.where(rng.random(n) < 0.85, 1, 2), 0)
    los = adm["los_hours"].to_numpy()
    n_post = np.where(los > PREDICTION_HOURS + 2, rng.poisson(np.clip(los / 160, 0.05, 1.5)), 0).clip(0, 2)
    z, died = adm["z_imaging"].to_numpy(), adm["label"].to_numpy() == 1
    rows = []
    for i in range(n):
        for _ in range(n_pre[i]):
            if rng.random() < 0.85:
                h = min(rng.uniform(-4, PREDICTION_HOURS - 1), los[i] - 0.3)
                rows.append((i, h, z[i] + rng.normal(0, 0.3), 1.0, 0.3))
            else:
                rows.append((i, -24 * rng.uniform(1, 20), 0.7 * z[i] + rng.normal(0, 0.4), 0.7, 0.4))
        for _ in range(n_post[i]):
            h = rng.uniform(PREDICTION_HOURS + 0.5, los[i])
            ramp = (h - PREDICTION_HOURS) / max(los[i] - PREDICTION_HOURS, 12)
            g = z[i] + (2.0 * ramp if died[i] else -0.4 * max(z[i], 0) * ramp) + rng.normal(0, 0.3)
            rows.append((i, h, g, np.nan, np.nan))
    # severity = load * z_imaging + N(0, noise_sd) before the prediction time; NaN after (outcome-dependent)
    st = pd.DataFrame(rows, columns=["adm", "hours", "severity", "load", "noise_sd"])
    a = adm.iloc[st["adm"].to_numpy()]
    st["subject_id"] = a["subject_id"].to_numpy()
    st["hadm_id"] = a["hadm_id"].to_numpy()
    st["time"] = a["admittime"].to_numpy() + pd.to_timedelta(np.round(st["hours"] * 3600, 3), unit="s")
    st["before_prediction"] = st["time"] <= a["prediction_time"].to_numpy()
    sick = (a["acuity"].to_numpy() > 0.3) | (st["hours"].to_numpy() > PREDICTION_HOURS)
    st["portable"] = (rng.random(len(st)) < np.where(sick, 0.85, 0.15)) & (st["hours"].to_numpy() > -6)
    st["study_id"] = 50_000_000 + rng.choice(9_999_999, size=len(st), replace=False)
    # Findings (shared by the study's images).
    g = st["severity"].to_numpy()
    m = len(st)
    st["opacity"] = 0.16 * np.log1p(np.exp(1.5 * (g - 0.4))) * rng.uniform(0.7, 1.3, m)
    st["edema"] = np.where(rng.random(m) < sigmoid(1.5 * g - 2), rng.uniform(0.1, 0.3, m), 0.0)
    eff = np.where(rng.random(m) < sigmoid(1.8 * g - 1.8), np.clip(0.06 + 0.07 * g + 0.04 * rng.normal(size=m),
                                                                     0.03, 0.4), 0.0)
    side = rng.random(m)
    st["effusion"] = eff   # the size drawn; each side shows it (the left scaled by a random factor)
    st["effusion_r"] = np.where(side < 0.7, eff, 0.0)
    st["effusion_l"] = np.where(side > 0.4, eff * rng.uniform(0.6, 1.2, m), 0.0)
    st["ctr"] = np.clip(0.45 + 0.045 * g + 0.03 * rng.normal(size=m), 0.36, 0.72)
    st["devices"] = st["portable"] & (rng.random(m) < sigmoid(-1 + 1.5 * a["acuity"].to_numpy()))
    return st


def plan_images(rng: np.random.Generator, st: pd.DataFrame) -> pd.DataFrame:
    """One row per image: a portable study has one AP view, others PA (+ LATERAL)."""
    lateral = ~st["portable"] & (rng.random(len(st)) < 0.8)
    views = [("AP",) if port else (("PA", "LATERAL") if lat else ("PA",))
             for port, lat in zip(st["portable"], lateral)]
    img = st.loc[np.repeat(st.index.to_numpy(), [len(x) for x in views])].reset_index(drop=True)
    img["view"] = [v for x in views for v in x]
    n = len(img)
    img["dicom_id"] = _dicom_ids(rng, n)
    img["path"] = [image_path(s, k, d) for s, k, d in zip(img["subject_id"], img["study_id"], img["dicom_id"])]
    img["scale"] = rng.uniform(0.9, 1.05, n)
    img["width"] = rng.uniform(0.88, 1.05, n)
    img["inspiration"] = rng.uniform(-0.08, 0.08, n)
    img["exposure"] = rng.uniform(1.2, 2.1, n)
    img["gamma"] = rng.uniform(0.8, 1.25, n)
    img["rib_phase"] = rng.uniform(0, 1, n)
    img["seed"] = child_seeds(rng, n)
    return img


def write_tables(root: Path, st: pd.DataFrame, img: pd.DataFrame, rng: np.random.Generator) -> int:
    t = img["time"]
    meta = img.assign(
        PerformedProcedureStepDescription=np.where(img["portable"], "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)"),
        ViewPosition=img["view"], Rows=SIZE, Columns=SIZE,
        StudyDate=(t.dt.year * 10000 + t.dt.month * 100 + t.dt.day).astype(int),
        StudyTime=np.round(t.dt.hour * 10000 + t.dt.minute * 100 + t.dt.second + t.dt.microsecond / 1e6, 3),
        ViewCodeSequence_CodeMeaning=img["view"].map(VIEW_MEANING),
        PatientOrientationCodeSequence_CodeMeaning=np.where(img["portable"] & (rng.random(len(img)) < 0.6),
                                                            "Recumbent", "Erect"))
    meta["ProcedureCodeSequence_CodeMeaning"] = meta["PerformedProcedureStepDescription"]
    meta = meta.sort_values(["subject_id", "study_id", "dicom_id"])
    n = write_csv(meta, root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS)
    write_csv(chexpert_labels(rng, st), root / "mimic-cxr-2.0.0-chexpert.csv.gz",
              ["subject_id", "study_id"] + CHEXPERT_LABELS, float_format="%.1f")
    return n


def chexpert_labels(rng: np.random.Generator, st: pd.DataFrame) -> pd.DataFrame:
    """Labels as a report labeller would give them: 1.0 positive, 0.0 negative, -1.0 uncertain, blank unmentioned."""
    m = len(st)

    def label(pos, unc, neg_p=0.3):
        out = np.where(pos, 1.0, np.where(unc, -1.0, np.where(rng.random(m) < neg_p, 0.0, np.nan)))
        return out
    lab = pd.DataFrame({"subject_id": st["subject_id"], "study_id": st["study_id"]})
    op = st["opacity"].to_numpy()
    eff = np.maximum(st["effusion_r"], st["effusion_l"]).to_numpy()
    ctr = st["ctr"].to_numpy()
    lab["Atelectasis"] = label(op > 0.25, (op > 0.15) & (op <= 0.25), 0.1)
    lab["Cardiomegaly"] = label(ctr > 0.53, (ctr > 0.5) & (ctr <= 0.53), 0.2)
    lab["Consolidation"] = label(op > 0.45, (op > 0.3) & (op <= 0.45), 0.2)
    lab["Edema"] = label(st["edema"].to_numpy() > 0.15, st["edema"].to_numpy() > 0, 0.2)
    lab["Enlarged Cardiomediastinum"] = label(ctr > 0.58, (ctr > 0.55) & (ctr <= 0.58), 0.05)
    lab["Fracture"] = label(rng.random(m) < 0.01, np.zeros(m, bool), 0.02)
    lab["Lung Lesion"] = label(rng.random(m) < 0.02, rng.random(m) < 0.01, 0.02)
    lab["Lung Opacity"] = label(op > 0.3, (op > 0.2) & (op <= 0.3), 0.1)
    lab["Pleural Effusion"] = label(eff > 0.08, (eff > 0) & (eff <= 0.08), 0.4)
    lab["Pleural Other"] = label(rng.random(m) < 0.01, np.zeros(m, bool), 0.0)
    lab["Pneumonia"] = label(op > 0.5, (op > 0.25) & (op <= 0.5), 0.2)
    lab["Pneumothorax"] = label(rng.random(m) < 0.01, np.zeros(m, bool), 0.4)
    lab["Support Devices"] = label(st["devices"].to_numpy(), np.zeros(m, bool), 0.0)
    findings = lab[[c for c in CHEXPERT_LABELS if c not in ("No Finding", "Support Devices")]]
    lab["No Finding"] = np.where((findings.fillna(0) != 0).any(axis=1), np.nan, 1.0)
    return lab.sort_values(["subject_id", "study_id"])


def image_specs(img: pd.DataFrame) -> list[dict]:
    cols = ["path", "view", "seed", "scale", "width", "inspiration", "exposure", "gamma", "rib_phase", "opacity",
            "edema", "effusion_r", "effusion_l", "ctr", "devices"]
    out = img[cols].to_dict("records")
    for p in out:
        p["seed"], p["devices"] = int(p["seed"]), bool(p["devices"])
    return out
