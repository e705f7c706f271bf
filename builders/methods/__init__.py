"""The false-negative methods, one folder (or module) each: RLHN (``rlhn/``), ARHN/PRHN (``arhn/``),
CLEAR (``clear/``), TopK-PercPos (``percpos.py``); ``base.py`` holds what every method returns
and ``run.py`` runs the ones a recipe names."""
