"""The synthetic cell-painting benchmark: synthetic.py renders fields of cells under every condition
of the paper (DMSO, three compounds at eight doses; DMSO vs nocodazole for Golgi) with known
per-cell parameters, so every method can be scored against the truth. data.py serves it as a
dataset."""
