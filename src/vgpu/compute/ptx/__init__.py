"""PTX text to a typed syntax tree (``syntax``) through ``parser``."""
