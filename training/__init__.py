"""The trainer: the loop (loop.py), its state and step, checkpoint and evaluation cadence, run log,
preemption, schedules and fault hooks."""
