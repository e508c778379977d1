"""The dataset formats: one entry each, read by training, ``pedcrowd eval``, ``infer --gt``
and ``data stats`` alike.

An entry names its reader (the function itself), the ground-truth file types it
claims, where its files live in the standard layout, and the MR^-2 protocol
its ground truth is evaluated with by default. Adding a format is a reader
module plus one entry in :data:`FORMATS`.

Layout templates use ``{root}`` and ``{split}``; the first candidate that exists
is used, and the first one is named in the error when none does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pedcrowd.errors import PedcrowdError
from pedcrowd.formats import caltech, citypersons, coco, crowdhuman, mot, widerperson

if TYPE_CHECKING:
    from pedcrowd.formats.records import ImageRecord


@dataclass(frozen=True)
class DatasetFormat:
    """One annotation format.

    Attributes:
        name: the ``data.format`` value.
        reader: ``function(path, **options) -> list[ImageRecord]``.
        suffixes: ground-truth file suffixes it reads (``"/"``: a folder).
        annotations: layout templates of the annotation file or folder.
        images: layout templates of the image folder.
        protocol: the MR^-2 protocol of its ground truth.
        claims: ``(path) -> bool``, for a suffix several formats share.
        options: reader keyword -> the ``data:`` config field that sets it in training.
        eval_options: reader keywords for ground truth read by ``pedcrowd eval``.
        prepare: ``(records, split, options) -> records`` applied
            for training (split selection, relabelling).
        image_candidates: ``(image_root, record) -> [Path]``,
            where an image may be (default: ``image_root / record.file_name``).
    """

    name: str
    reader: Callable[..., list[ImageRecord]]
    suffixes: tuple[str, ...]
    annotations: tuple[str, ...]
    images: tuple[str, ...]
    protocol: str = "citypersons"
    claims: Callable[[Path], bool] | None = None
    options: dict[str, str] = field(default_factory=dict)
    eval_options: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[list[ImageRecord], str, dict], list[ImageRecord]] | None = None
    image_candidates: Callable[[Path, ImageRecord], list[Path]] | None = None

    def read(self, path: str | Path, **options) -> list[ImageRecord]:
        return self.reader(path, **options)

    def reads(self, path: Path) -> bool:
        """Whether a ground-truth file or folder ``path`` is in this format."""
        suffix = "/" if path.is_dir() else path.suffix.lower()
        return suffix in self.suffixes and (self.claims is None or self.claims(path))

    def prepare_training(self, records: list[ImageRecord], split: str, options: dict) -> list[ImageRecord]:
        """The records trained on for ``split`` (the ``prepare`` hook, if any)."""
        return records if self.prepare is None else self.prepare(records, split, options)

    def image_paths(self, image_root: Path, record: ImageRecord) -> list[Path]:
        """Where the image of ``record`` may be; the first that exists is read."""
        if self.image_candidates is None:
            return [image_root / record.file_name]
        return self.image_candidates(image_root, record)

    def layout(self, templates: Sequence[str], root: str | Path, split: str) -> list[Path]:
        return [Path(t.format(root=Path(root), split=split)) for t in templates]

    def find_annotations(self, root: str | Path, split: str) -> Path:
        candidates = self.layout(self.annotations, root, split)
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise PedcrowdError(
                f"no {self.name} '{split}' annotations found; looked for "
                + ", ".join(str(p) for p in candidates)
            )
        return found

    def find_images(self, root: str | Path, split: str) -> Path:
        candidates = self.layout(self.images, root, split)
        return next((p for p in candidates if p.is_dir()), candidates[0])


FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat(
            "citypersons", citypersons.read_citypersons, (".mat", ".json"),
            annotations=tuple(
                f"{d}/{n}" for n in ("anno_{split}.mat", "{split}_gt.json") for d in ("{root}/annotations", "{root}")
            ),
            images=("{root}/leftImg8bit/{split}",),
            claims=citypersons.is_citypersons_file,
        ),
        DatasetFormat(  # before caltech, which reads any other folder
            "mot", mot.read_mot, ("/",), annotations=("{root}/{split}", "{root}"),
            images=("{root}/{split}", "{root}"), claims=mot.is_mot_folder,
            image_candidates=mot.image_candidates,
        ),
        DatasetFormat(  # before caltech, which reads any other folder or .txt
            "widerperson", widerperson.read_widerperson, ("/", ".txt"),
            annotations=("{root}/{split}.txt",), images=("{root}/Images",),
            claims=widerperson.is_widerperson,
        ),
        DatasetFormat(
            "caltech", caltech.read_caltech_text, ("/", ".txt"),
            annotations=("{root}/annotations",), images=("{root}/images",), protocol="caltech",
            prepare=caltech.select_split,
            image_candidates=caltech.image_candidates,
        ),
        DatasetFormat(
            "crowdhuman", crowdhuman.read_odgt, (".odgt",),
            annotations=("{root}/annotation_{split}.odgt",), images=("{root}/Images",),
        ),
        DatasetFormat(
            "coco", coco.read_coco_json, (".json",),
            annotations=("{root}/annotations/instances_{split}.json",),
            images=("{root}/images/{split}", "{root}/{split}", "{root}/images", "{root}"),
            options={"category": "coco_category"}, eval_options={"category": "auto"},
            prepare=coco.as_pedestrians,
        ),
    )
}


def dataset_format(name: str) -> DatasetFormat:
    """The entry of ``data.format`` ``name``; PedcrowdError listing the choices otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise PedcrowdError(f"data.format: {name!r} is not one of {tuple(FORMATS)}") from None


def ground_truth_format(path: Path) -> DatasetFormat:
    """The format of a ground-truth file or folder (the first entry that reads it)."""
    for fmt in FORMATS.values():
        if fmt.reads(path):
            return fmt
    kinds = sorted({s for f in FORMATS.values() for s in f.suffixes if s != "/"})
    raise PedcrowdError(
        f"{path}: unknown ground-truth format (expected {', '.join(kinds)} or a folder)"
    )
