"""Reference implementations the tests and the benchmarks share.

Each module here re-implements something pedcrowd computes fast, the slow and
obvious way: plain Python loops over images, detections and boxes, written from
the rules of the official code and sharing no code with the module it checks.
They are oracles (the tests compare pedcrowd with them number for number) and
baselines (the ``scripts/bench_*.py`` benchmarks time pedcrowd against them),
never a second implementation to use: nothing else in ``pedcrowd`` imports this
package.

* :mod:`pedcrowd.reference.mr`: MR^-2 of the CityPersons and Caltech protocols
  (checks ``pedcrowd.eval``).
* :mod:`pedcrowd.reference.crowdhuman`: CrowdDet's AP, MR^-2 and JI, and a
  CrowdHuman-sized synthetic set (checks ``pedcrowd.eval.crowdhuman``).
* :mod:`pedcrowd.reference.greedy_nms_loss`: NMS-Loss as a greedy NMS loop
  (checks ``pedcrowd.losses.nms_loss``).
* :mod:`pedcrowd.reference.tiny`: the tiny detector and synthetic set the
  end-to-end tests train, a configuration small enough for a laptop.
"""
