"""`textdiff bench`: training throughput of every back-end beside the AR baseline and GPT-2, and the sampling
frontier (judge quality against wall time) of trained runs."""
