"""Build-time degraded copies of another set of the same build, for people who want the files.

    sets:
      - {name: sd2, generator: sd2}
      - {name: sd2_jpeg75, generator: {type: degrade, of: sd2, ops: "jpeg:75+resize:0.5"}}

Each sample of the degrade set is the sample of set `of` with the same source record, read back from the
build's output, decoded, put through the operation chain (`fakeforge.degrade`, seeded by the *original*
sample's key, so the pixels equal what `fakeforge eval --robustness` scores for that image under the same
chain) and stored as it came out: never resized again (the original already followed the build's policy),
and losslessly as PNG so the files hold exactly the degraded pixels (`lossless: false` keeps the build's
format, which re-encodes them). Its label is the original set's; its metadata keeps the original sample's
JSON under `original` and records `degrade: {of, chain, source_key}`.

The builder resolves `of` (a set listed before this one, with the same source; not a zoo set), fills in
where that set lives and its label and hash (`of_location`, `of_label`, `of_set_hash`: the hash makes a
changed original a changed degrade set), and runs the sets in order, so on every rank the original's shard
with the same index is finished before the copy is made. An original sample that failed is that sample's
error here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from generators.base import Generator, GeneratorConfig, GenRequest, GenResult, SampleError


@dataclass
class DegradeConfig(GeneratorConfig):
    """`of`: the set to copy; `ops`: the operation chain (a string `jpeg:75+resize:0.5`, a mapping or a list).
    `of_location`, `of_label`, `of_set_hash` are filled in by the builder, not written by hand."""

    type: str = "degrade"
    of: str = ""
    ops: Any = None
    lossless: bool = True
    batch_size: int = 16
    of_location: str = ""
    of_label: str = ""
    of_set_hash: str = ""

    def validate(self) -> None:
        from fakeforge.degrade import parse_chain

        super().validate()
        if not isinstance(self.of, str) or not self.of.strip():
            raise ValueError(f"generator.of = {self.of!r} must name another set of this build")
        if not parse_chain(self.ops):  # a bad operation is a ConfigError naming it
            raise ValueError(f"generator.ops = {self.ops!r} names no operation (e.g. 'jpeg:75+resize:0.5')")


class DegradeSet(Generator):
    """Degraded copies of set `of`'s samples; labelled like that set (see the module docstring)."""

    config_class: ClassVar[type[GeneratorConfig]] = DegradeConfig
    reads_other_set: ClassVar[bool] = True  # the builder binds `of` and labels the set with `of_label`

    @classmethod
    def storage_policy(cls, config: DegradeConfig, policy):
        """The build's policy without its resize (the copy keeps the degraded size), as PNG unless
        `lossless: false`."""
        kept = dataclasses.replace(policy, resize="none", size=None)
        return dataclasses.replace(kept, format="png") if config.lossless else kept

    def load(self) -> None:
        from fakeforge.degrade import parse_chain

        if not self.config.of_location:
            raise RuntimeError("a degrade set is built by the builder, which tells it where set "
                               f"'{self.config.of}' is (generator.of_location is empty)")
        self.chain = parse_chain(self.config.ops)
        self._where: dict[str, tuple] = {}  # original key -> (its tar, {extension: (offset, size)})
        self._indexed: set[str] = set()

    def _index(self) -> None:
        """Where each member of the original set's finished tars lies (one header pass per tar, nothing else
        read): key -> (tar, {extension: (data offset, size)}), so a sample is then one seek and read."""
        import tarfile

        from fakeforge.shards.reader import list_tars, open_shard, shard_id

        for tar in list_tars(self.config.of_location):
            if shard_id(tar) in self._indexed:
                continue
            with open_shard(tar) as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.split("/")[-1].partition(".")
                    self._where.setdefault(key, (tar, {}))[1][ext.lower()] = (member.offset_data, member.size)
            self._indexed.add(shard_id(tar))

    def _original(self, key: str) -> dict[str, bytes]:
        """The members {extension: bytes} of the original sample `key`."""
        from fakeforge.shards.reader import open_shard

        if key not in self._where:
            self._index()  # tars finished since the last look (this rank's shard of the same index)
        if key not in self._where:
            raise SampleError(f"sample {key} is not in set '{self.config.of}' (it failed there, or that set's "
                              "shard is missing: rebuild it first)")
        tar, members = self._where[key]
        out = {}
        with open_shard(tar) as fh:
            for ext, (offset, size) in members.items():
                fh.seek(offset)
                out[ext] = fh.read(size)
        return out

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from fakeforge.images import load_rgb
        from fakeforge.shards.reader import sample_image_bytes

        out = []
        for req in requests:
            source_key = self.config.of + req.key[req.key.index("-"):]  # set names hold no '-'
            try:
                members = self._original(source_key)
                _ext, data = sample_image_bytes({"__key__": source_key, **members})
                degraded = self.chain.apply(load_rgb(data, name=source_key), key=source_key)
            except (SampleError, KeyError, ValueError, OSError) as exc:
                out.append(GenResult(error=f"{type(exc).__name__}: {exc}"))
                continue
            original = json.loads(members["json"]) if "json" in members else {}
            out.append(GenResult(image=degraded, extra={
                "degrade": {"of": self.config.of, "chain": self.chain.spec(), "source_key": source_key},
                "original": original}))
        return out

    def settings(self) -> dict:
        return {"type": "degrade", "of": self.config.of, "ops": self.chain.spec() if hasattr(self, "chain")
                else str(self.config.ops), "of_set_hash": self.config.of_set_hash}
