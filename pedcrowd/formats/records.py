"""The in-memory form of one image's annotations, shared by every parser.

Every annotation parser in :mod:`pedcrowd.formats` returns a list of
:class:`ImageRecord`; the evaluator (:mod:`pedcrowd.eval`) and the training
datasets (:mod:`pedcrowd.data`) both consume it, so each file format is parsed
in exactly one place.

Shapes: K = number of annotated objects in the image.

Boxes stay ``xywh`` here, as in the files, because the official evaluators do
their arithmetic on ``xywh`` and parity to 1e-9 depends on doing the same;
the datasets convert to ``xyxy`` at their edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Object categories, normalised across formats. The format's own label is
# mapped to one of these by its parser.
PEDESTRIAN = "pedestrian"  # CityPersons 1, Caltech 'person', CrowdHuman 'person', COCO person
IGNORE_REGION = "ignore"  # CityPersons 0 (posters, reflections), Caltech 'ignore', CrowdHuman 'mask'
RIDER = "rider"  # CityPersons 2
SITTING = "sitting"  # CityPersons 3
OTHER = "other"  # CityPersons 4 (unusual postures)
GROUP = "group"  # CityPersons 5, Caltech 'people'
UNSURE = "unsure"  # Caltech 'person?'

CATEGORIES = (PEDESTRIAN, IGNORE_REGION, RIDER, SITTING, OTHER, GROUP, UNSURE)


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


@dataclass
class ImageRecord:
    """Annotations of one image.

    Attributes:
        id: image id (CityPersons: 1-based position in the official file).
        file_name: image file name relative to the data set's image root
            (CityPersons: ``CITY/NAME_leftImg8bit.png``; Caltech: ``setXX/VYYY/I#####.jpg``).
        boxes: [K, 4] float64 full-body boxes, ``xywh`` as in the file.
        vis_boxes: [K, 4] float64 visible-part boxes ``xywh``; rows of NaN
            where the format gives no visible box for that object.
        categories: [K] str, one of :data:`CATEGORIES`.
        ignore: [K] bool, the format's own ignore flag (CityPersons JSON
            ``ignore``; the official label mapping for the ``.mat`` files;
            Caltech ``ign``; CrowdHuman ``extra.ignore``; COCO ``iscrowd``/``ignore``).
        heights: [K] float64, the height the protocol filters on (the CityPersons
            ``height`` field; else ``boxes[:, 3]``).
        vis_ratios: [K] float64, visible fraction (the CityPersons ``vis_ratio``
            field; else area(vis_box) / area(box); NaN where unknown).
        ann_ids: [K] int64 annotation ids (unique, >= 1) where the format has them.
        crowd: [K] bool, the ``iscrowd`` flag where the format has it.
        width, height: image size in pixels where known.
    """

    id: int
    file_name: str
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    vis_boxes: np.ndarray = field(default_factory=_empty_boxes)
    categories: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    heights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    vis_ratios: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    ann_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    width: int | None = None
    height: int | None = None

    def __len__(self) -> int:
        return len(self.boxes)
