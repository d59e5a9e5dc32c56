"""The pipeline on top of the stages: presets, run context, stages in run order, workers, executors, pictures."""
