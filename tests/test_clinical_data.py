"""xrisk.data.clinical: the long-CSV reader (bad-row policy), normalisation, the generator, the views."""

import gzip
import json

import numpy as np
import pytest
import torch

from xrisk.data.clinical import (
    HOSPITAL_A, HOSPITAL_B, LOCAL_VIEWS, ClinicalFormatError, CSVLayout, Tokens, VariableStats, contiguous_crop,
    generate_stays, jitter_values, load_clinical_dir, ordered_subsample, pretraining_views, read_events, read_labels,
    write_events_csv, write_generated_dataset, write_labels_csv,
)
from xrisk.metrics import auroc, fit_linear_classifier

HEADER = "stay_id,time,variable,value\n"


def _write(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- reader
def test_reader_groups_stays_and_keeps_time_order(tmp_path):
    f = _write(tmp_path / "e.csv", HEADER + "b,0.5,hr,90\na,0,hr,80\nb,1.0,lactate,2.5\na,2,spo2,97\na,2,hr,81\n")
    stays, report = read_events(f)
    assert stays.stay_ids == ("b", "a") and stays.variable_names == ("hr", "lactate", "spo2")
    assert stays.lengths.tolist() == [2, 3]
    t, v, x = stays.stay(1)
    assert t.tolist() == [0.0, 2.0, 2.0] and v.tolist() == [1, 3, 1] and x.tolist() == [80.0, 97.0, 81.0]
    assert report.rows == report.kept == 5 and report.num_skipped == 0
    assert np.isnan(stays.labels).all()


@pytest.mark.parametrize("row, reason", [
    ("a,1.0,hr,abc", "non-numeric value 'abc'"),
    ("a,1.0,hr,", "non-numeric value ''"),
    ("a,1.0,hr,nan", "non-numeric value 'nan'"),
    ("a,x,hr,80", "non-numeric time 'x'"),
    ("a,1.0,bilirubin,1.2", "unknown variable 'bilirubin'"),
    ("a,0.5,hr,80", "time going backwards"),
    ("a,1.0,hr", "wrong number of fields"),
    (",1.0,hr,80", "empty stay id"),
])
def test_bad_row_errors_name_the_file_and_line(tmp_path, row, reason):
    f = _write(tmp_path / "events.csv", HEADER + "a,0.0,hr,80\na,0.9,spo2,97\n" + row + "\na,3.0,hr,82\n")
    with pytest.raises(ClinicalFormatError, match=reason) as info:
        read_events(f, variables=["hr", "spo2"])
    assert str(info.value).startswith(f"{f}:4: ")
    assert info.value.line == 4 and info.value.path == str(f)
    stays, report = read_events(f, variables=["hr", "spo2"], on_bad_row="skip")
    assert report.rows == 4 and report.kept == 3 and report.num_skipped == 1
    assert report.examples == [f"{f}:4: {report.examples[0].split(':4: ', 1)[1]}"]
    assert reason in report.examples[0]
    assert stays.num_tokens == 3 and reason.split(" '")[0] in report.skipped


def test_backwards_time_message_points_at_the_previous_row(tmp_path):
    f = _write(tmp_path / "e.csv", HEADER + "a,5,hr,80\nb,1,hr,70\na,4,hr,81\n")
    with pytest.raises(ClinicalFormatError, match=r":4: time going backwards \(4 within stay 'a', after 5 at line 2\)"):
        read_events(f)
    stays, _ = read_events(_write(tmp_path / "ok.csv", HEADER + "a,5,hr,80\nb,1,hr,70\na,5,hr,81\n"))
    assert stays.lengths.tolist() == [2, 1]  # equal times are fine; stays need not be contiguous


def test_skip_counts_every_reason_and_keeps_few_examples(tmp_path):
    rows = "".join(f"a,{i},hr,x\n" for i in range(30)) + "a,40,hr,80\na,41,zz,1\n"
    stays, report = read_events(_write(tmp_path / "e.csv", HEADER + rows), variables=["hr"], on_bad_row="skip",
                                max_examples=5)
    assert report.skipped == {"non-numeric value": 30, "unknown variable": 1}
    assert len(report.examples) == 5 and report.kept == 1
    assert "skipped: non-numeric value 30, unknown variable 1" in report.summary()


def test_missing_column_and_policy_validation(tmp_path):
    f = _write(tmp_path / "e.csv", "stay,time,variable,value\na,0,hr,1\n")
    with pytest.raises(ClinicalFormatError, match=r"e.csv:1: missing column\(s\) \['stay_id'\]"):
        read_events(f, on_bad_row="skip")
    stays, _ = read_events(f, layout=CSVLayout(stay="stay"))
    assert stays.stay_ids == ("a",)
    with pytest.raises(ValueError, match="on_bad_row"):
        read_events(f, layout=CSVLayout(stay="stay"), on_bad_row="ignore")
    with pytest.raises(ValueError, match="time_scale"):
        read_events(f, layout=CSVLayout(stay="stay"), time_scale=0.0)


def test_gzip_minutes_and_extra_columns(tmp_path):
    f = tmp_path / "nurse.csv.gz"
    with gzip.open(f, "wt") as g:
        g.write("patientunitstayid,offset,name,val,note\n7,30,HR,88,x\n7,90,HR,90,y\n")
    layout = CSVLayout(stay="patientunitstayid", time="offset", variable="name", value="val")
    stays, _ = read_events(f, layout=layout, time_scale=1 / 60)
    assert stays.stay(0)[0].tolist() == [0.5, 1.5]


def test_label_file_policy(tmp_path):
    f = _write(tmp_path / "labels.csv", "stay_id,label\na,1\nb,0\nc,2\na,0\n")
    with pytest.raises(ClinicalFormatError, match=r"labels.csv:4: label not 0/1 '2'"):
        read_labels(f)
    labels, report = read_labels(f, on_bad_row="skip")
    assert labels == {"a": 1.0, "b": 0.0}
    assert report.skipped == {"label not 0/1": 1, "duplicate stay": 1}
    assert "first at line 2" in report.examples[1]


def test_normalisation_is_fitted_on_the_training_split_only(tmp_path):
    root = tmp_path / "d"
    for split, values in (("train", (10.0, 20.0, 30.0)), ("test", (1000.0, 2000.0, 3000.0))):
        (root / split).mkdir(parents=True)
        rows = "".join(f"s{i},{i},hr,{v}\n" for i, v in enumerate(values))
        _write(root / split / "events.csv", HEADER + rows)
    splits = load_clinical_dir(root)
    stats = VariableStats.fit(splits.train)
    assert stats.mean.tolist() == [20.0] and stats.std.tolist() == [10.0]
    assert splits.external is None
    back = VariableStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back.variable_names == stats.variable_names
    for field in ("mean", "std", "count"):
        np.testing.assert_array_equal(getattr(back, field), getattr(stats, field))
    # a variable the training split never saw is a bad row of the test split
    _write(root / "test" / "events.csv", HEADER + "t,0,hr,1\nt,1,lactate,2\n")
    with pytest.raises(ClinicalFormatError, match="unknown variable 'lactate'"):
        load_clinical_dir(root)


# ----------------------------------------------------------------------------- generator
def test_generated_outcome_depends_on_the_latent_state():
    stays, latent = generate_stays(3000, seed=0)
    y = torch.from_numpy(stays.labels)
    assert 0.07 < float(y.mean()) < 0.13  # about 10 %
    state = torch.tensor(np.stack([latent["severity_baseline"], latent["severity_end"]], 1), dtype=torch.float32)
    fit, test = slice(0, 2000), slice(2000, 3000)
    clf = fit_linear_classifier(state[fit], y[fit].long(), num_classes=2)
    z = clf.logits(state[test])
    assert float(auroc(z[:, 1] - z[:, 0], y[test])) > 0.75  # chance is 0.5
    shuffled = torch.from_numpy(np.random.default_rng(0).permutation(stays.labels))
    assert abs(float(auroc(state[:, 1], shuffled)) - 0.5) < 0.05  # no signal without the link


def test_generated_stays_have_variable_specific_rates_and_state_dependent_missingness():
    stays, latent = generate_stays(1500, seed=1)
    names = stays.variable_names
    counts = np.stack([np.bincount(stays.variables[stays.offsets[i]:stays.offsets[i + 1]], minlength=len(names) + 1)[1:]
                       for i in range(len(stays))])
    hours = np.array([stays.stay(i)[0].max() for i in range(len(stays))])
    per_hour = counts.sum(0) / hours.sum()
    hr, creat = names.index("heart_rate"), names.index("creatinine")
    assert per_hour[hr] > 5 * per_hour[creat]  # vitals hourly, creatinine about twice a day
    sick = latent["severity_baseline"] > 1.0
    well = latent["severity_baseline"] < -1.0
    lac = names.index("lactate")
    rate_sick = counts[sick, lac].sum() / hours[sick].sum()
    rate_well = counts[well, lac].sum() / hours[well].sum()
    assert rate_sick > 3 * rate_well  # lactate is ordered for sick patients
    assert all(np.all(np.diff(stays.stay(i)[0]) >= 0) for i in range(20))


def test_the_two_hospitals_differ_as_documented():
    a, lat_a = generate_stays(800, site=HOSPITAL_A, seed=3)
    b, lat_b = generate_stays(800, site=HOSPITAL_B, seed=3)
    np.testing.assert_array_equal(lat_a["risk"], lat_b["risk"])  # same patients of one seed ...
    np.testing.assert_array_equal(a.labels, b.labels)
    names = a.variable_names

    def per_variable(stays, name):
        return stays.values[stays.variables == names.index(name) + 1]

    assert b.stay_ids[0].startswith("B-") and a.stay_ids[0].startswith("A-")
    assert len(per_variable(b, "heart_rate")) > 1.7 * len(per_variable(a, "heart_rate"))  # charted every 30 min
    assert len(per_variable(b, "lactate")) < 0.4 * len(per_variable(a, "lactate"))  # rarely measured
    assert len(per_variable(b, "gcs")) < 0.8 * len(per_variable(a, "gcs"))
    assert per_variable(b, "temperature").mean() < per_variable(a, "temperature").mean() - 0.25  # -0.4 C offset
    assert per_variable(b, "sbp").mean() > per_variable(a, "sbp").mean() + 4  # +6 mmHg offset


def test_generated_data_round_trips_through_the_csv_reader(tmp_path):
    stays, _ = generate_stays(40, seed=2)
    write_events_csv(tmp_path / "train" / "events.csv", stays)
    write_labels_csv(tmp_path / "train" / "labels.csv", stays)
    back, report = read_events(tmp_path / "train" / "events.csv", variables=stays.variable_names)
    labels, _ = read_labels(tmp_path / "train" / "labels.csv")
    back = back.with_labels(labels)
    assert back.stay_ids == stays.stay_ids and report.num_skipped == 0
    np.testing.assert_array_equal(back.offsets, stays.offsets)
    np.testing.assert_array_equal(back.variables, stays.variables)
    np.testing.assert_allclose(back.times, stays.times, atol=1e-9)
    np.testing.assert_allclose(back.values, stays.values, rtol=1e-5)
    np.testing.assert_array_equal(back.labels, stays.labels)


def test_generated_dataset_folder(tmp_path):
    settings = write_generated_dataset(tmp_path, num_train=30, num_test=20, num_external=25, seed=4)
    mtime = (tmp_path / "train" / "events.csv").stat().st_mtime_ns
    assert write_generated_dataset(tmp_path, num_train=30, num_test=20, num_external=25, seed=4) == settings
    assert (tmp_path / "train" / "events.csv").stat().st_mtime_ns == mtime  # same settings: left as it is
    splits = load_clinical_dir(tmp_path)
    assert (len(splits.train), len(splits.test), len(splits.external)) == (30, 20, 25)
    assert set(splits.train.stay_ids).isdisjoint(splits.test.stay_ids)
    assert not np.isnan(splits.external.labels).any()


# ----------------------------------------------------------------------------- views
def test_views_keep_time_order():
    g = torch.Generator().manual_seed(0)
    n = 300
    tokens = Tokens(torch.arange(n, dtype=torch.float32), torch.randint(1, 5, (n,)), torch.randn(n))
    std = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    seen = set()
    for _ in range(30):
        glob, mask, local, kind = pretraining_views(tokens, budget=100, crop_size=40, mask_fraction=0.1,
                                                    value_std=std, generator=g)
        seen.add(LOCAL_VIEWS[kind])
        assert glob.times.numel() == 100 and mask.shape == (100,)
        assert torch.all(torch.diff(glob.times) > 0) and torch.all(torch.diff(local.times) >= 0)
        assert set(local.times.tolist()) <= set(glob.times.tolist())  # drawn from the budgeted view
        if kind in (0, 1):
            assert local.times.numel() == 40
        else:
            assert torch.equal(local.times, glob.times)
    assert seen == set(LOCAL_VIEWS)
    idx = ordered_subsample(10, 20, g)
    assert idx.tolist() == list(range(10))  # short stays are kept whole
    crop = contiguous_crop(50, 10, g)
    assert torch.equal(crop, torch.arange(int(crop[0]), int(crop[0]) + 10))


def test_contiguous_crop_is_contiguous_in_the_view():
    g = torch.Generator().manual_seed(1)
    times = torch.tensor([0.0, 0.1, 5.0, 5.5, 9.0, 12.0, 30.0, 31.0])
    tokens = Tokens(times, torch.ones(8, dtype=torch.long), torch.zeros(8))
    for _ in range(40):
        glob, _, local, kind = pretraining_views(tokens, budget=8, crop_size=3, mask_fraction=0.0,
                                                 value_std=torch.ones(2), generator=g)
        if kind == 0:
            start = glob.times.tolist().index(float(local.times[0]))
            assert local.times.tolist() == glob.times[start : start + 3].tolist()


def test_jitter_view_adds_small_noise_not_a_second_copy_of_the_value():
    """The reference's jitter computes value + value + noise; here the value moves by 0.1-0.2 std."""
    g = torch.Generator().manual_seed(2)
    values = torch.full((2000,), 100.0)
    scale = torch.full((2000,), 10.0)
    out = jitter_values(values, scale, g)
    assert abs(float(out.mean()) - 100.0) < 0.5  # not 200
    assert 1.0 - 0.1 < float(out.std()) < 2.0 + 0.1  # sigma in [0.1, 0.2] of the variable's std (10)
