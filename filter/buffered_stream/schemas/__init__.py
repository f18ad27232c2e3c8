"""One module per API: how its stream folds into its non-stream answer, and its request, error and
usage conventions (sans-I/O, like the core).
"""
