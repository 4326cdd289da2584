"""Training VLM² on episodes of the synthetic world (or any data set in its question format).

config.py   the run, as one YAML file: data, stages, optimiser, checkpointing
data.py     episodes cached in memory as the model's input: clips, depth, poses, questions
trainer.py  the stream unrolled over each clip with gradients; depth and answer losses; stages,
            checkpoints with resume (safetensors + JSON), the loss log and its plot
"""
