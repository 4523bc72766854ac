"""The engine: encoder families and model loading, attention, the optimizer, the stabilisers,
the gradient-norm probe, the train step and the one builder of every compiled program, and the
device layout of seed groups. Uses data, config and infra; knows nothing of workdirs or studies."""
