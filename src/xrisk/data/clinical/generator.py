"""Generator of ICU-like stays with a latent patient state, for tests, recipes and benchmarks.

Real ICU data (MIMIC-III, eICU) cannot be shipped or downloaded here, so ``xrisk run ehr --data
generated`` writes stays made by this model into the long CSV layout of
:mod:`xrisk.data.clinical.reader` and reads them back through the real reader.

**Latent state.** Stay ``i`` has an observation window of ``T_i = hours * U(0.5, 1)`` hours and a
severity ``z_i(t) = mu_i + delta_i t / 24 + o_i(t)``: a baseline ``mu_i ~ N(0, 1)``, a daily trend
``delta_i ~ N(0, 0.6)`` (deterioration or recovery) and an Ornstein-Uhlenbeck wander ``o_i`` (standard
deviation 0.5, correlation time 8 h), simulated on an hourly grid and interpolated.

**Measurements.** Each variable of :data:`VARIABLES` (vitals, neurological score, labs) is a noisy
readout of the state: ``x = m_v + s_v (a_v z(t) + b_iv + e_v eps)`` (log scale for the skewed labs:
lactate, creatinine, glucose), with loading ``a_v``, a per-patient offset ``b_iv ~ N(0, 1)``
(chronic differences between patients, as large as the severity signal), measurement noise ``e_v``, then clipped to a physiological
range and rounded like a chart. **Sampling rates are variable-specific**: vitals are candidate-charted
on a jittered regular grid (hourly; temperature and GCS every 4 h), labs as Poisson processes (every 4
to 12 h on average), all scaled by a per-patient monitoring intensity ``~ logNormal(0, 0.4)`` (long
stays and intensively monitored patients give a long-tailed number of tokens). **Missingness depends
on the state**: a candidate measurement is taken with probability
``sigmoid(logit(p_v) + k_v z(t))`` (sicker patients are measured more; lactate is mostly ordered
for sick patients, ``k = 1.2``).

**Outcome.** In-hospital death with ``P = sigmoid(alpha + 1.6 * zbar_i)``, ``zbar_i`` the mean
severity over the last 12 h of the window; ``alpha`` is calibrated (bisection on 20,000 simulated
latent states, fixed seed) so that the expected prevalence is ``prevalence`` (default 10 %). The
outcome depends on the data only through the latent state, which the measurements reveal noisily.

**Second hospital** (:data:`HOSPITAL_B`, for external validation). The same patient population and
outcome model, measured differently: monitors charted every 30 min (heart rate, SpO2, respiratory
rate: rate x2), temperature every 8 h (x0.5), labs less often (x0.6); lactate rarely measured (base
probability 0.1 instead of 0.3) and GCS often missing (0.5 instead of 0.85), a weaker state dependence
of missingness (slopes x0.5); and measurement offsets: temperature -0.4 C (tympanic vs core),
systolic and diastolic pressure +6 / +4 mmHg (cuff vs arterial line), glucose +12 mg/dL (point of
care), SpO2 -1 %.

Example:
    >>> stays, latent = generate_stays(50, seed=0)
    >>> len(stays), stays.variable_names[:3], sorted(latent)
    (50, ('heart_rate', 'resp_rate', 'spo2'), ['risk', 'severity_baseline', 'severity_end'])
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from xrisk.data.clinical.stays import ClinicalStays

__all__ = ["VariableSpec", "SiteProfile", "VARIABLES", "HOSPITAL_A", "HOSPITAL_B", "generate_stays",
           "write_events_csv", "write_labels_csv", "write_generated_dataset", "outcome_intercept"]


@dataclass(frozen=True)
class VariableSpec:
    """One measured variable of the generator (see the module docstring for the model).

    Attributes:
        name, unit: the variable name written to the CSV file and its unit.
        mean, sd: population centre ``m_v`` and scale ``s_v`` (log-space scale when ``log``).
        loading: ``a_v``, change per unit severity in units of ``sd``.
        noise: ``e_v``, measurement noise in units of ``sd``.
        rate: candidate measurements per hour.
        regular: candidates on a jittered regular grid (charted vitals) instead of a Poisson process.
        observe: ``p_v``, probability that a candidate is taken at severity 0.
        state_slope: ``k_v``, log-odds of being taken per unit severity.
        low, high, decimals: physiological range and chart rounding.
        log: log-normal variable (``mean`` is the median).
    """

    name: str
    unit: str
    mean: float
    sd: float
    loading: float
    noise: float
    rate: float
    regular: bool
    observe: float
    state_slope: float
    low: float
    high: float
    decimals: int
    log: bool = False


#: The variables of the generator (vitals, GCS, labs).
VARIABLES: tuple[VariableSpec, ...] = (
    VariableSpec("heart_rate", "bpm", 85, 15, 0.8, 0.3, 1.0, True, 0.95, 0.3, 30, 200, 0),
    VariableSpec("resp_rate", "/min", 18, 4, 0.7, 0.35, 1.0, True, 0.9, 0.3, 5, 50, 0),
    VariableSpec("spo2", "%", 96.5, 2.0, -0.7, 0.4, 1.0, True, 0.95, 0.3, 60, 100, 0),
    VariableSpec("sbp", "mmHg", 120, 20, -0.6, 0.3, 1.0, True, 0.9, 0.3, 50, 230, 0),
    VariableSpec("dbp", "mmHg", 65, 12, -0.5, 0.35, 1.0, True, 0.9, 0.3, 25, 140, 0),
    VariableSpec("temperature", "C", 37.0, 0.6, 0.5, 0.3, 0.25, True, 0.9, 0.2, 33, 42, 1),
    VariableSpec("gcs", "points", 13, 2.5, -0.7, 0.2, 0.25, True, 0.85, 0.2, 3, 15, 0),
    VariableSpec("lactate", "mmol/L", 1.6, 0.45, 0.9, 0.2, 1 / 6, False, 0.3, 1.2, 0.3, 20, 1, log=True),
    VariableSpec("creatinine", "mg/dL", 1.0, 0.45, 0.5, 0.15, 1 / 12, False, 0.9, 0.3, 0.2, 12, 2, log=True),
    VariableSpec("wbc", "K/uL", 10, 4, 0.5, 0.2, 1 / 12, False, 0.9, 0.3, 0.5, 60, 1),
    VariableSpec("potassium", "mmol/L", 4.1, 0.5, 0.3, 0.3, 1 / 8, False, 0.85, 0.3, 2.0, 7.5, 1),
    VariableSpec("glucose", "mg/dL", 130, 0.3, 0.4, 0.35, 1 / 4, False, 0.8, 0.3, 40, 600, 0, log=True),
)


@dataclass(frozen=True)
class SiteProfile:
    """How a hospital measures: rate multipliers, observation probabilities and offsets per variable.

    Attributes:
        name: short name; it prefixes the stay ids (``"A-17"``).
        rate_scale: ``{variable: factor}`` on the candidate rate (default 1).
        observe: ``{variable: p_v}`` overriding the base observation probability.
        state_slope_scale: factor on every ``k_v`` (state dependence of missingness).
        offset: ``{variable: value}`` added to every measurement (calibration, device, site practice).
    """

    name: str
    rate_scale: Mapping[str, float] = field(default_factory=dict)
    observe: Mapping[str, float] = field(default_factory=dict)
    state_slope_scale: float = 1.0
    offset: Mapping[str, float] = field(default_factory=dict)


#: The development hospital (the specs as given).
HOSPITAL_A = SiteProfile("A")
#: The external hospital (see the module docstring).
HOSPITAL_B = SiteProfile(
    "B",
    rate_scale={"heart_rate": 2.0, "spo2": 2.0, "resp_rate": 2.0, "temperature": 0.5, "lactate": 0.6,
                "creatinine": 0.6, "wbc": 0.6, "potassium": 0.6, "glucose": 0.6},
    observe={"lactate": 0.1, "gcs": 0.5},
    state_slope_scale=0.5,
    offset={"temperature": -0.4, "sbp": 6.0, "dbp": 4.0, "glucose": 12.0, "spo2": -1.0},
)

_OUTCOME_SLOPE = 1.6
_OU_SD, _OU_HOURS = 0.5, 8.0
_TREND_SD, _PATIENT_SD, _INTENSITY_SD = 0.6, 1.0, 0.4


def _severity_paths(rng: np.random.Generator, n: int, hours: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(window [n], grid z [n, G], mu [n], zbar [n])`` on the hourly grid ``0..ceil(hours)``."""
    grid = int(math.ceil(hours)) + 1
    window = hours * rng.uniform(0.5, 1.0, n)
    mu = rng.standard_normal(n)
    delta = _TREND_SD * rng.standard_normal(n)
    phi = math.exp(-1.0 / _OU_HOURS)
    ou = np.empty((n, grid))
    ou[:, 0] = _OU_SD * rng.standard_normal(n)
    eps = rng.standard_normal((n, grid - 1)) * _OU_SD * math.sqrt(1 - phi * phi)
    for k in range(1, grid):
        ou[:, k] = phi * ou[:, k - 1] + eps[:, k - 1]
    t = np.arange(grid, dtype=np.float64)
    z = mu[:, None] + delta[:, None] * t[None, :] / 24.0 + ou
    last = (t[None, :] <= window[:, None]) & (t[None, :] >= window[:, None] - 12.0)
    zbar = (z * last).sum(1) / np.maximum(last.sum(1), 1)
    return window, z, mu, zbar


@lru_cache(maxsize=32)
def outcome_intercept(prevalence: float, hours: float) -> float:
    """``alpha`` with ``E[sigmoid(alpha + 1.6 zbar)] = prevalence`` over 20,000 latent paths (seed 12345)."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence!r}")
    _, _, _, zbar = _severity_paths(np.random.default_rng(12345), 20000, hours)
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        p = float(np.mean(1.0 / (1.0 + np.exp(-(mid + _OUTCOME_SLOPE * zbar)))))
        lo, hi = (mid, hi) if p < prevalence else (lo, mid)
    return 0.5 * (lo + hi)


def _candidate_times(rng: np.random.Generator, spec: VariableSpec, rate: float, window: float) -> np.ndarray:
    if spec.regular:
        step = 1.0 / rate
        base = np.arange(rng.uniform(0, step), window, step)
        return np.clip(base + rng.uniform(-0.15, 0.15, base.size) * step, 0.0, window)
    count = rng.poisson(rate * window)
    return rng.uniform(0.0, window, count)


def generate_stays(
    num_stays: int,
    *,
    site: SiteProfile = HOSPITAL_A,
    hours: float = 48.0,
    prevalence: float = 0.10,
    seed: int = 0,
    variables: tuple[VariableSpec, ...] = VARIABLES,
    first_id: int = 0,
) -> tuple[ClinicalStays, dict[str, np.ndarray]]:
    """Generate ``num_stays`` labelled stays of ``site`` (see the module docstring).

    Args:
        num_stays: number of stays.
        site: the hospital's measurement profile.
        hours: maximum observation window (each stay observes ``hours * U(0.5, 1)``).
        prevalence: expected outcome prevalence (calibrates ``alpha``).
        seed: seed of everything (a different ``site`` with the same seed gives the same patients'
            latent states measured differently).
        variables: the variable specs.
        first_id: number of the first stay (ids ``"<site>-<first_id + k>"``).

    Returns:
        ``(stays, latent)``: the stays (labels 0/1) and the latent quantities
        per stay, ``severity_baseline`` (``mu``), ``severity_end`` (``zbar``) and ``risk`` (the true
        outcome probability).
    """
    if num_stays < 1:
        raise ValueError(f"num_stays must be >= 1, got {num_stays}")
    if not (math.isfinite(hours) and hours > 0):
        raise ValueError(f"hours must be finite and > 0, got {hours!r}")
    unknown = (set(site.rate_scale) | set(site.observe) | set(site.offset)) - {v.name for v in variables}
    if unknown:
        raise ValueError(f"site {site.name!r} names unknown variables {sorted(unknown)}")
    rng = np.random.default_rng([int(seed), 2024])
    window, z, mu, zbar = _severity_paths(rng, num_stays, hours)
    alpha = outcome_intercept(float(prevalence), float(hours))
    risk = 1.0 / (1.0 + np.exp(-(alpha + _OUTCOME_SLOPE * zbar)))
    labels = (rng.uniform(size=num_stays) < risk).astype(np.float32)
    intensity = np.exp(_INTENSITY_SD * rng.standard_normal(num_stays))
    patient = _PATIENT_SD * rng.standard_normal((num_stays, len(variables)))
    # the measurement process has its own stream, so two sites share the patients of one seed
    mrng = np.random.default_rng([int(seed), 2024, sum(map(ord, site.name))])
    grid = np.arange(z.shape[1], dtype=np.float64)
    t_parts, v_parts, x_parts, lengths = [], [], [], np.zeros(num_stays, np.int64)
    for i in range(num_stays):
        ts, vs, xs = [], [], []
        for k, spec in enumerate(variables):
            rate = spec.rate * site.rate_scale.get(spec.name, 1.0) * intensity[i]
            t = _candidate_times(mrng, spec, rate, window[i])
            if t.size == 0:
                continue
            zt = np.interp(t, grid, z[i])
            p0 = site.observe.get(spec.name, spec.observe)
            logit = math.log(p0 / (1 - p0)) + spec.state_slope * site.state_slope_scale * zt
            keep = mrng.uniform(size=t.size) < 1.0 / (1.0 + np.exp(-logit))
            t, zt = t[keep], zt[keep]
            u = spec.loading * zt + patient[i, k] + spec.noise * mrng.standard_normal(t.size)
            x = np.exp(math.log(spec.mean) + spec.sd * u) if spec.log else spec.mean + spec.sd * u
            x = np.round(np.clip(x + site.offset.get(spec.name, 0.0), spec.low, spec.high), spec.decimals)
            ts.append(t)
            vs.append(np.full(t.size, k + 1, np.int64))
            xs.append(x)
        t_all = np.concatenate(ts) if ts else np.zeros(0)
        order = np.argsort(np.round(t_all, 4), kind="stable")  # the CSV keeps 4 decimals of hours
        t_parts.append(np.round(t_all[order], 4))
        v_parts.append(np.concatenate(vs)[order] if vs else np.zeros(0, np.int64))
        x_parts.append(np.concatenate(xs)[order] if xs else np.zeros(0))
        lengths[i] = t_all.size
    offsets = np.zeros(num_stays + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    stays = ClinicalStays(
        stay_ids=tuple(f"{site.name}-{first_id + i}" for i in range(num_stays)),
        variable_names=tuple(v.name for v in variables), offsets=offsets,
        times=np.concatenate(t_parts), variables=np.concatenate(v_parts),
        values=np.concatenate(x_parts).astype(np.float32), labels=labels,
    )
    return stays, {"severity_baseline": mu, "severity_end": zbar, "risk": risk}


def write_events_csv(path: str | os.PathLike[str], stays: ClinicalStays) -> Path:
    """Write ``stays`` as ``stay_id,time,variable,value`` rows (the reader's default layout)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = stays.variable_names
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["stay_id", "time", "variable", "value"])
        for i, sid in enumerate(stays.stay_ids):
            t, v, x = stays.stay(i)
            w.writerows((sid, f"{a:.4f}", names[b - 1], f"{c:.6g}") for a, b, c in zip(t.tolist(), v.tolist(), x.tolist()))
    return p


def write_labels_csv(path: str | os.PathLike[str], stays: ClinicalStays) -> Path:
    """Write the labelled stays as ``stay_id,label`` rows."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["stay_id", "label"])
        w.writerows((stays.stay_ids[i], int(stays.labels[i])) for i in stays.labelled.tolist())
    return p


def write_generated_dataset(
    root: str | os.PathLike[str],
    *,
    num_train: int = 2000,
    num_test: int = 1000,
    num_external: int = 1000,
    hours: float = 48.0,
    prevalence: float = 0.10,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a data folder for :func:`~xrisk.data.clinical.load_clinical_dir`: ``train/`` and ``test/``
    from :data:`HOSPITAL_A`, ``external/`` from :data:`HOSPITAL_B`, ``variables.txt`` and
    ``generator.json`` (these settings). The splits use the generator seeds ``3 seed``,
    ``3 seed + 1`` and ``3 seed + 2``, so they hold different patients (test ids continue after the
    training ids). An existing folder whose ``generator.json`` holds the same settings is left as it is.

    Returns:
        The settings written to ``generator.json``.
    """
    base = Path(root)
    settings = {"num_train": int(num_train), "num_test": int(num_test), "num_external": int(num_external),
                "hours": float(hours), "prevalence": float(prevalence), "seed": int(seed), "format": 1,
                "sites": {"train": asdict(HOSPITAL_A), "test": asdict(HOSPITAL_A), "external": asdict(HOSPITAL_B)}}
    settings = json.loads(json.dumps(settings))  # plain JSON types (the mappings are dicts)
    marker = base / "generator.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return settings
    splits = (("train", num_train, HOSPITAL_A, 0), ("test", num_test, HOSPITAL_A, 1),
              ("external", num_external, HOSPITAL_B, 2))
    first = {"train": 0, "test": int(num_train), "external": 0}
    for name, n, site, stream in splits:
        stays, _ = generate_stays(n, site=site, hours=hours, prevalence=prevalence, seed=int(seed) * 3 + stream,
                                  first_id=first[name])
        write_events_csv(base / name / "events.csv", stays)
        write_labels_csv(base / name / "labels.csv", stays)
    (base / "variables.txt").write_text("".join(v.name + "\n" for v in VARIABLES), encoding="utf-8")
    marker.write_text(json.dumps(settings, indent=2) + "\n")
    return settings
