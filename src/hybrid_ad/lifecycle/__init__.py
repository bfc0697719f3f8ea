"""A model's life after `run`: retraining the judge as labels arrive, and a registry of
versions with an atomically switched `current` (README, "Retraining and model versions")."""
