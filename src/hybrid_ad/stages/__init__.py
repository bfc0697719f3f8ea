"""The fitted stages: feature scaling, rules, autoencoder, label-free detectors, judge."""
