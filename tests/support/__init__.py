"""Test support for idc-sync: a fault-injecting S3/GCS-protocol server, a moto launcher, and
IDC-like series built from real index rows with synthetic DICOM contents."""
