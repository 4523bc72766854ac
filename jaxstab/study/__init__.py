"""Studies: validating a config before anything is written, expanding a study into settings,
one setting's prepare -> build -> loop -> write, evaluation points, early stopping, run names,
merging a setting's outputs, and the workdir. Uses engine, data, results, config and infra."""
