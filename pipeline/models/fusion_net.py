"""The fused network (torch ``nn.Module``): one encoder per modality, then fusion.

Encoders: an MLP per modality over its tabular features; for ECG also a 1-D CNN over
the waveform (12 leads, decimated); for imaging also a MONAI CNN over the image.
Fusion strategies:
- ``early``: concatenate the modality embeddings -> MLP head;
- ``late``: one logit head per modality, summed over the PRESENT modalities;
- ``hybrid``: early + late;
- ``attention``: a learned query attends over the present modalities' tokens.
An absent modality (mask 0) is replaced by a learned missing-modality embedding
(early/hybrid), contributes no logit (late) or is masked out of attention, so its
(imputed) inputs never reach the output.
``wide``: every strategy also adds a linear term per present modality over its tabular
features (a "wide and deep" net), and a learned offset per absent one, so risk that is
additive in the features need not be learned through the MLPs.
"""
from __future__ import annotations

import torch
from torch import nn

FUSIONS = ("early", "late", "hybrid", "attention")


def mlp(d_in: int, d_out: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class ECGEncoder(nn.Module):
    """1-D CNN over [batch, 12, T] waveforms."""

    def __init__(self, out: int, leads: int = 12):
        super().__init__()
        chans = [leads, 16, 32, 48, 64]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(a, b, kernel_size=7, stride=2, padding=3), nn.BatchNorm1d(b), nn.GELU()]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * chans[-1], out)

    def forward(self, x):
        h = self.conv(x)
        return self.proj(torch.cat([h.mean(-1), h.amax(-1)], dim=1))


class ImageEncoder(nn.Module):
    """A small MONAI CNN: the residual convolution trunk of monai.networks.nets.Classifier,
    average-pooled to a 2 x 2 grid (left/right, upper/lower: where on a film a finding is),
    then projected.  Pooling instead of flattening the last feature map keeps the head at
    4 x 32 inputs instead of 32 x (size/8)^2: on the 5k benchmark the flattened head
    overfitted and lowered the net's AUROC (benchmarks/fusion.py)."""

    def __init__(self, out: int, size: int):
        super().__init__()
        from monai.networks.nets import Classifier
        self.trunk = Classifier(in_shape=(1, size, size), classes=out, channels=(8, 16, 32), strides=(2, 2, 2),
                                num_res_units=1).net
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.proj = nn.Linear(4 * 32, out)

    def forward(self, x):
        return self.proj(self.pool(self.trunk(x)).flatten(1))


def load_weights(net: nn.Module, weights: dict, path) -> None:
    """``net.load_state_dict(weights)``, with a DataError naming the file when the saved
    layers are not this version's (a model saved before an architecture change)."""
    from pipeline.errors import DataError
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise DataError(f"the saved weights do not fit this version's network ({first[:200]})", file=path,
                        hint="the model was saved by an earlier version: retrain it with mmpipe train") from None


class FusionNet(nn.Module):
    def __init__(self, dims: dict[str, int], fusion: str = "attention", hidden: int = 64, dropout: float = 0.1,
                 ecg_wave: bool = False, image: bool = False, image_size: int = 64, wide: bool = False):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} not in {FUSIONS}")
        self.modalities = list(dims)
        self.fusion = fusion
        self.tab = nn.ModuleDict({m: mlp(max(d, 1), hidden, hidden, dropout) for m, d in dims.items()})
        self.ecg_wave = ECGEncoder(hidden) if ecg_wave and "ecg" in dims else None
        self.image = ImageEncoder(hidden, image_size) if image and "imaging" in dims else None
        self.missing = nn.Parameter(torch.zeros(len(dims), hidden))
        self.wide = nn.ModuleDict({m: nn.Linear(max(d, 1), 1) for m, d in dims.items()}) if wide else None
        self.wide_absent = nn.Parameter(torch.zeros(len(dims))) if wide else None
        M = len(dims)
        if fusion in ("early", "hybrid"):
            self.head = mlp(M * hidden, 1, hidden, dropout)
        if fusion in ("late", "hybrid"):
            self.heads = nn.ModuleDict({m: nn.Linear(hidden, 1) for m in dims})
            self.bias = nn.Parameter(torch.zeros(1))
        if fusion == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.1)
            self.pos = nn.Parameter(torch.randn(1, M, hidden) * 0.1)
            self.attn = nn.MultiheadAttention(hidden, num_heads=4, dropout=dropout, batch_first=True)
            self.head = mlp(hidden, 1, hidden, dropout)
            self.empty = nn.Parameter(torch.zeros(1, hidden))

    def zero_output(self) -> None:
        """Make the output 0 for every input (the last layer of each head and the linear path
        start at 0): a net learning a residual over a base logit starts at the base."""
        last = []
        if hasattr(self, "head"):
            last.append(self.head[-1])
        if hasattr(self, "heads"):
            last += list(self.heads.values())
            nn.init.zeros_(self.bias)
        if self.wide is not None:
            last += list(self.wide.values())
            nn.init.zeros_(self.wide_absent)
        for layer in last:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def embed(self, batch: dict) -> torch.Tensor:
        """[batch, M, hidden] modality embeddings (missing ones replaced)."""
        hs = []
        for i, m in enumerate(self.modalities):
            h = self.tab[m](batch["tab"][m])
            if m == "ecg" and self.ecg_wave is not None and "wave" in batch:
                h = h + self.ecg_wave(batch["wave"])
            if m == "imaging" and self.image is not None and "image" in batch:
                h = h + self.image(batch["image"])
            mask = batch["mask"][:, i:i + 1]
            hs.append(mask * h + (1 - mask) * self.missing[i])
        return torch.stack(hs, dim=1)

    def forward(self, batch: dict) -> torch.Tensor:
        logit = self._deep(batch)
        if self.wide is not None:
            mask = batch["mask"]
            for i, m in enumerate(self.modalities):
                present = mask[:, i]
                logit = logit + present * self.wide[m](batch["tab"][m]).squeeze(-1) \
                    + (1 - present) * self.wide_absent[i]
        return logit

    def _deep(self, batch: dict) -> torch.Tensor:
        mask = batch["mask"]
        H = self.embed(batch)
        if self.fusion == "attention":
            q = self.query.expand(H.shape[0], -1, -1)
            pad = mask < 0.5
            none = pad.all(dim=1)
            pad = pad.clone()
            pad[none] = False  # a row with nothing attends to the missing embeddings
            out, _ = self.attn(q, H + self.pos, H + self.pos, key_padding_mask=pad)
            return self.head(out[:, 0]).squeeze(-1)
        logit = 0
        if self.fusion in ("early", "hybrid"):
            logit = logit + self.head(H.flatten(1)).squeeze(-1)
        if self.fusion in ("late", "hybrid"):
            per = torch.cat([self.heads[m](H[:, i]) for i, m in enumerate(self.modalities)], dim=1)
            logit = logit + self.bias + (per * mask).sum(dim=1)
        return logit


class FusionEnsemble(nn.Module):
    """A deep ensemble: the mean logit of nets of one architecture trained from different seeds
    (each early-stopped on its own).  It takes and returns what a ``FusionNet`` does."""

    def __init__(self, members: list[FusionNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, batch: dict) -> torch.Tensor:
        return torch.stack([m(batch) for m in self.members]).mean(dim=0)
