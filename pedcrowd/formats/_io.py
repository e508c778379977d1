"""Former home of :mod:`pedcrowd.fileio`; kept only for ``engine/train.py`` (owned by the
reliability work), which should import :mod:`pedcrowd.fileio` instead. Delete then."""

from pedcrowd.fileio import write_text_atomic

__all__ = ["write_text_atomic"]
