"""A realistic synthetic cohort in the MIMIC-IV, MIMIC-IV-ECG, MIMIC-IV-Note and MIMIC-CXR-JPG layouts."""
from pipeline.synthetic.cohort import generate_cohort

__all__ = ["generate_cohort"]
