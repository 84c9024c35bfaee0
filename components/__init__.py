"""privface components: the pure library (data, models, training, frequency transforms,
defenses, attacks, metrics, reporting). Nothing here imports Dagster or `pipelines`."""
