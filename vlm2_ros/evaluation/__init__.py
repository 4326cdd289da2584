"""VSI-Bench-style evaluation: question files, metrics (accuracy, MRA), predictors, reports."""
