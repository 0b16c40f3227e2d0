"""The reference answers of the labs: the same functions as their blanks, filled in."""
