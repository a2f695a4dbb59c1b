"""The source kinds (`source.kind` in a build config): name -> "module:SOURCE_KIND" (a `SourceKind`), imported
only when used, like the generator, attack and detector registries. A new source is a module with a reader
and one line here."""
from __future__ import annotations

from fakeforge.registry import Registry

SOURCES = Registry("source kind")
SOURCES.register("coco", "fakeforge.sources.coco:COCO", "COCO captions_*.json + image folder")
SOURCES.register("flickr30k", "fakeforge.sources.flickr30k:FLICKR30K",
                 "Flickr30k (Karpathy dataset_flickr30k.json or results.csv) + image folder")
SOURCES.register("imagefolder", "fakeforge.sources.imagefolder:IMAGEFOLDER",
                 "images_dir/<class>/<image>, labelled, no captions")
SOURCES.register("imagenet", "fakeforge.sources.imagenet:IMAGENET", "ImageNet val folder + labels CSV")
SOURCES.register("demo", "fakeforge.sources.demo:DEMO", "a small synthetic COCO-layout set made on the fly")
SOURCES.register("photos", "fakeforge.sources.photos:PHOTOS_SOURCE",
                 "crops of the real sample photos shipped with scikit-image/scikit-learn (train/test splits)")
SOURCES.register("folder", "fakeforge.sources.downloaded:FOLDER", "a downloaded set: images under images_dir")
SOURCES.register("frames", "fakeforge.sources.downloaded:FRAMES", "a downloaded set: one folder of frames per video")
SOURCES.register("shards", "fakeforge.sources.downloaded:SHARDS", "a downloaded set: WebDataset .tar files")
SOURCES.register("diffusiondb", "fakeforge.sources.downloaded:DIFFUSIONDB",
                 "DiffusionDB: metadata parquet + part-NNNNNN.zip archives")
