"""The systems PhenDiff is compared with, one file per paper (or family), each a method of
method.py's interface: cyclegan.py, stargan.py, stylegan.py + phenex.py (PhenEx), encoders.py +
dino.py + ganformer.py + dsae.py (the second paper's DSAE), autoencoders.py and alae.py (its
baselines), and gan.py, the blocks and losses the GANs share."""
