"""The systems PhenDiff is compared with, one file per paper, each a method of method.py's
interface: cyclegan.py (Zhu et al. 2017), stargan.py (Choi et al. 2018), and gan.py, the blocks
and losses they share."""
