"""pedcrowd: pedestrian detection in crowds.

Train torchvision Faster R-CNN pedestrian detectors with crowd-aware losses
(NMS-Loss, Repulsion Loss) and evaluate them with the official CityPersons and
Caltech log-average miss rate (MR^-2).

The package is importable without torch: only the modules that build or run a
model import it, so ``pedcrowd eval`` starts instantly.
"""

__version__ = "0.1.0"
