"""Data: NIfTI/DICOM I/O, the phantom cohort, intensity normalisation, packed shards."""
