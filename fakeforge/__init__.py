"""fakeforge: regenerate fake-image datasets as WebDataset shards and train/evaluate detectors on them."""

__version__ = "0.1.0"
