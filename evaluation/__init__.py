"""How every method is scored, for `eval.py`, `phendiff.py demo` and train.py's evaluation grids:

stats.py           Fréchet distances and their intervals, correlations
scores.py          what a translation is scored by: reconstruction, dose-response, own vs another
                   reference (the input, or the truth), encoder features
features.py        CellProfiler-style cell features
inception.py       the FID network (weights by path)
representation.py  the DSAE paper's F1 of encoders' features against floors
plots.py           every figure
report.py          markdown tables, the one report writer, the sections reports share
commands.py        the bodies of eval.py's commands
demo.py            `phendiff.py demo`: one method on the synthetic benchmark
reproduce.py       `eval.py reproduce`: both papers, every method, one resumable command

Nothing here imports phendiff.py, train.py or eval.py: methods are loaded through method.py."""
