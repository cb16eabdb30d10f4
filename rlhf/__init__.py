"""RL post-training: algorithms as pure tensor functions, rollout/learner actors, the driver loop."""
