"""Results: the workdir's file names and typed records with their one reader, the statistics of
failed runs and seeds, picks of runs for figures, and the failure forecast. Uses data (metrics),
config and infra."""
