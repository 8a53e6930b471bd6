"""Reward functions with TRL's signature: outcome rewards (`math_answer_reward`) and what they read (`final_answer`)."""

from .answer import final_answer, reference_answer
from .math_reward import math_answer_reward

__all__ = ["final_answer", "math_answer_reward", "reference_answer"]
