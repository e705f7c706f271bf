"""The false-negative methods, one folder each: RLHN (``rlhn/``), ARHN and PRHN (``arhn/``),
CLEAR (``clear/``), TopK-PercPos (``percpos/``). Each package exposes the same names (the method
contract, ``base.py``); ``METHODS`` below is the one list the recipe, the run (``run.py``), the dry
run, sharding and the dataset card read. A new method is a new folder and one line here."""

from __future__ import annotations

from builders.methods import arhn, clear, percpos, rlhn
from builders.methods.arhn import prhn

METHODS = (rlhn, arhn, prhn, clear, percpos)  # in the order they run and appear in the card
