"""ARHN/PRHN: verbatim answer snippets per passage, then listwise ranking against the positive."""
