"""Re-exports only: ICU time series (reader of the long CSV layout, generator, views)."""

from xrisk.data.clinical.generator import (
    HOSPITAL_A, HOSPITAL_B, VARIABLES, SiteProfile, VariableSpec, generate_stays, outcome_intercept,
    write_events_csv, write_generated_dataset, write_labels_csv,
)
from xrisk.data.clinical.reader import (
    BadRowPolicy, ClinicalFormatError, ClinicalSplits, CSVLayout, ReadReport, load_clinical_dir, read_events,
    read_labels,
)
from xrisk.data.clinical.stays import ClinicalStays, VariableStats
from xrisk.data.clinical.views import (
    LOCAL_VIEWS, Tokens, contiguous_crop, jitter_values, ordered_subsample, pretraining_views, value_mask,
)

__all__ = ["ClinicalStays", "VariableStats",
           "BadRowPolicy", "ClinicalFormatError", "ClinicalSplits", "CSVLayout", "ReadReport", "load_clinical_dir",
           "read_events", "read_labels",
           "HOSPITAL_A", "HOSPITAL_B", "VARIABLES", "SiteProfile", "VariableSpec", "generate_stays",
           "outcome_intercept", "write_events_csv", "write_generated_dataset", "write_labels_csv",
           "LOCAL_VIEWS", "Tokens", "contiguous_crop", "jitter_values", "ordered_subsample", "pretraining_views",
           "value_mask"]
