"""Training: arguments, LR schedules, checkpoints and the pretrain/midtrain loop."""
