"""hardneg builders."""
